/* chat: see engine/chat.h or engine.h */
#include "engine/engine.h"
