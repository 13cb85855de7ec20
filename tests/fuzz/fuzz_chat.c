/* libFuzzer target for chat_render_template (engine/chat.c), the renderer
 * behind every /v1/chat/completions request.
 *
 * Byte 0 picks the template (low 3 bits: none, SmolLM2's real template
 * read from its GGUF when present, and one telltale text per family; 7
 * means the first field of the input is the template text itself) and
 * add_generation_prompt (bit 3).  The rest is NUL-separated fields: BOS
 * text, EOS text, then role and content pairs.  A refusal comes with an
 * error message; a rendering is bounded by its inputs (no runaway
 * duplication) and every message's content that needs no stripping
 * appears in it. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/gguf.h"
#include "engine/internal.h"

#ifndef SPARSED_SOURCE_ROOT
#define SPARSED_SOURCE_ROOT "."
#endif

#define MAX_MSGS 64

static const char *templates[8] = {
    NULL,
    "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}",
    "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n",
    "{{ bos_token }}<|start_header_id|>{{ m.role }}<|end_header_id|>",
    "[INST] <<SYS>>\n{{ system }}\n<</SYS>>",
    "{{ bos_token }}[INST] {{ m.content }} [/INST]",
    "<|user|>\n{{ m.content }}{{ eos_token }}",
    NULL,
};

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    const char *root = getenv("SPARSED_ROOT");
    char path[4096];
    snprintf(path, sizeof path, "%s/.cache/models/SmolLM2-135M-Instruct.Q4_1.gguf",
             root ? root : SPARSED_SOURCE_ROOT);
    char err[256];
    static gguf_file *f;     /* open for the whole run: the template lives in it */
    f = gguf_open(path, err, sizeof err);
    const char *t = f ? gguf_get_str(f, "tokenizer.chat_template") : NULL;
    if (t)
        templates[1] = t;
    return 0;
}

/* Splits data at NULs into malloc'd NUL-terminated fields. */
static int split(const uint8_t *d, size_t n, char **out, int max)
{
    int k = 0;
    size_t start = 0;
    for (size_t i = 0; i <= n && k < max; i++) {
        if (i == n || d[i] == 0) {
            char *s = malloc(i - start + 1);
            if (!s)
                break;
            memcpy(s, d + start, i - start);
            s[i - start] = 0;
            out[k++] = s;
            start = i + 1;
        }
    }
    return k;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    char *f[3 + 2 * MAX_MSGS];
    int nf = split(data + 1, size - 1, f, 3 + 2 * MAX_MSGS);
    int sel = data[0] & 7, add_gen = data[0] >> 3 & 1;
    int i = 0;
    const char *tmpl = templates[sel];
    if (sel == 7)
        tmpl = i < nf ? f[i++] : "";
    const char *bos = i < nf ? f[i++] : NULL;
    const char *eos = i < nf ? f[i++] : NULL;
    chat_msg m[MAX_MSGS];
    int n = 0;
    size_t content = 0;
    for (; i + 1 < nf && n < MAX_MSGS; i += 2, n++) {
        m[n].role = f[i];
        m[n].content = data[0] & 0x10 && !f[i + 1][0] ? NULL : f[i + 1];
        content += strlen(f[i + 1]) + strlen(f[i]);
    }
    char err[128] = "";
    char *out = chat_render_template(tmpl, bos, eos, m, n, add_gen, err, sizeof err);
    if (!out) {
        if (!err[0])
            __builtin_trap();
    } else {
        /* contents appear at most twice, or once as JSON (Llama 3.1's tool
         * turns), where a control byte takes 6 ("\u001c") */
        size_t extra = strlen(bos ? bos : "") + strlen(eos ? eos : "") + 64;
        size_t bound = (tmpl ? strlen(tmpl) : 0) + 6 * content + (size_t)(n + 2) * extra;
        size_t len = strlen(out);
        if (len > bound)
            __builtin_trap();
        /* ChatML and plain copy contents verbatim */
        const char *fam = chat_template_family(tmpl);
        if (!strcmp(fam, "chatml") || !strcmp(fam, "plain"))
            for (int k = 0; k < n; k++)
                if (m[k].content && !strstr(out, m[k].content))
                    __builtin_trap();
        free(out);
    }
    for (int k = 0; k < nf; k++)
        free(f[k]);
    return 0;
}
