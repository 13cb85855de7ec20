/* sampler: see engine/sampler.h or engine.h */
#include "engine/engine.h"
