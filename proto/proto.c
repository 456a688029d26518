/* proto.c — placeholder until the codec lands. */
#include "gw_proto.h"
