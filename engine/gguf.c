/* gguf: see engine/gguf.h or engine.h */
#include "engine/engine.h"
