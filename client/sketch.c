/* sketch.c — placeholder until the sketch lands. */
#include "gw_sketch.h"
