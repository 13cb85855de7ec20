#include "kvcache/kvcache.h"
