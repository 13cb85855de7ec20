#include <stdio.h>
int main(void) { puts("sparsed"); return 0; }
