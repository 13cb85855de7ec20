/* model: see engine/model.h or engine.h */
#include "engine/engine.h"
