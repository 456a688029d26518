# gradwatchd executable: main, config, log, ingest + the module libraries.
add_library(gwdaemon STATIC config.c ingest.c ring.c)
target_include_directories(gwdaemon PUBLIC ${CMAKE_CURRENT_SOURCE_DIR})
target_link_libraries(gwdaemon PUBLIC gwengine gwstore gwhttp gwalerts PkgConfig::LIBUV PkgConfig::ZMQ
                                      PkgConfig::INIH Threads::Threads)
target_link_libraries(gwdaemon PUBLIC gwremote) # remote write sink
add_executable(gradwatchd main.c)
target_link_libraries(gradwatchd PRIVATE gwdaemon PkgConfig::SYSTEMD)
install(TARGETS gradwatchd RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR})
