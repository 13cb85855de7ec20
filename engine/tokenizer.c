/* tokenizer: see engine/tokenizer.h or engine.h */
#include "engine/engine.h"
