/* engine.c — placeholder until the engine lands. */
#include "engine.h"
