/* engine: see engine/engine.h or engine.h */
#include "engine/engine.h"
