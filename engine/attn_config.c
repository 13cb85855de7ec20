/* attn_config: see engine/attn_config.h or engine.h */
#include "engine/engine.h"
