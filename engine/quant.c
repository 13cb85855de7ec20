/* quant: see engine/quant.h or engine.h */
#include "engine/engine.h"
