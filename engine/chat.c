/* Chat templates.  We do not run Jinja: the template text only tells which
 * family it is (by telltale substrings), and each family is rendered here
 * exactly as its published template renders under transformers'
 * apply_chat_template (trim_blocks, lstrip_blocks).  tests/unit/test_chat.c
 * checks this against jinja2 output (tools/tokref.py).  "developer" is the
 * newer name of "system" and is rendered as it. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "engine/internal.h"

enum {
    FAM_PLAIN, FAM_CHATML, FAM_LLAMA3, FAM_LLAMA31, FAM_LLAMA2, FAM_MISTRAL, FAM_ZEPHYR, FAM_PHI3,
    FAM_GEMMA, FAM_DEEPSEEK_R1,
};
static const char *const fam_names[] = {"plain", "chatml", "llama3", "llama3.1", "llama2", "mistral",
                                        "zephyr", "phi3", "gemma", "deepseek-r1"};

/* DeepSeek's markers, "<|User|>" and the like with fullwidth bars (U+FF5C)
 * and U+2581 between words, spelled in escapes: this file is ASCII. */
#define DS_BAR "\xef\xbd\x9c"
#define DS_JOIN "\xe2\x96\x81"
#define DS_USER "<" DS_BAR "User" DS_BAR ">"
#define DS_ASSISTANT "<" DS_BAR "Assistant" DS_BAR ">"
#define DS_EOS "<" DS_BAR "end" DS_JOIN "of" DS_JOIN "sentence" DS_BAR ">"
#define DS_OUTPUTS_BEGIN "<" DS_BAR "tool" DS_JOIN "outputs" DS_JOIN "begin" DS_BAR ">"
#define DS_OUTPUTS_END "<" DS_BAR "tool" DS_JOIN "outputs" DS_JOIN "end" DS_BAR ">"
#define DS_OUTPUT_BEGIN "<" DS_BAR "tool" DS_JOIN "output" DS_JOIN "begin" DS_BAR ">"
#define DS_OUTPUT_END "<" DS_BAR "tool" DS_JOIN "output" DS_JOIN "end" DS_BAR ">"

static int family(const char *tmpl)
{
    if (!tmpl) return FAM_PLAIN;
    if (strstr(tmpl, "<|im_start|>")) return FAM_CHATML;
    /* Llama 3.1, 3.2 and 3.3 always write a dated system block */
    if (strstr(tmpl, "<|start_header_id|>"))
        return strstr(tmpl, "Cutting Knowledge Date") ? FAM_LLAMA31 : FAM_LLAMA3;
    if (strstr(tmpl, "<start_of_turn>")) return FAM_GEMMA;
    if (strstr(tmpl, DS_USER) && strstr(tmpl, DS_ASSISTANT)) return FAM_DEEPSEEK_R1;
    if (strstr(tmpl, "[INST]")) return strstr(tmpl, "<<SYS>>") ? FAM_LLAMA2 : FAM_MISTRAL;
    if (strstr(tmpl, "<|user|>")) return strstr(tmpl, "<|end|>") ? FAM_PHI3 : FAM_ZEPHYR;
    return FAM_PLAIN;
}

const char *chat_template_family(const char *tmpl) { return fam_names[family(tmpl)]; }

/* ---- string builder ----------------------------------------------------- */

typedef struct sb {
    char *s;
    size_t n, cap;
    int oom;
} sb;

static void sb_addn(sb *b, const char *s, size_t n)
{
    if (b->oom) return;
    if (b->n + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->n + n + 1) cap *= 2;
        char *p = realloc(b->s, cap);
        if (!p) {
            b->oom = 1;
            return;
        }
        b->s = p;
        b->cap = cap;
    }
    memcpy(b->s + b->n, s, n);
    b->n += n;
    b->s[b->n] = 0;
}

static void sb_add(sb *b, const char *s) { sb_addn(b, s, strlen(s)); }

/* Python's str.strip(): what Jinja's trim filter and .strip() do. */
static int py_space_at(const char *s, size_t n, size_t i, int *len)
{
    static const char *const multi[] = {
        "\xc2\x85", "\xc2\xa0", "\xe1\x9a\x80", "\xe2\x80\xa8", "\xe2\x80\xa9",
        "\xe2\x80\xaf", "\xe2\x81\x9f", "\xe3\x80\x80",
    };
    unsigned char c = (unsigned char)s[i];
    if (c == ' ' || (c >= 0x09 && c <= 0x0D) || (c >= 0x1C && c <= 0x1F)) {
        *len = 1;
        return 1;
    }
    if (c >= 0x80) {
        for (size_t k = 0; k < sizeof(multi) / sizeof(multi[0]); k++) {
            size_t m = strlen(multi[k]);
            if (i + m <= n && memcmp(s + i, multi[k], m) == 0) {
                *len = (int)m;
                return 1;
            }
        }
        /* U+2000..U+200A */
        if (i + 3 <= n && c == 0xE2 && (unsigned char)s[i + 1] == 0x80 &&
            (unsigned char)s[i + 2] >= 0x80 && (unsigned char)s[i + 2] <= 0x8A) {
            *len = 3;
            return 1;
        }
    }
    return 0;
}

static void sb_add_stripped(sb *b, const char *s)
{
    size_t n = strlen(s), a = 0, e = n;
    int len;
    while (a < e && py_space_at(s, n, a, &len)) a += (size_t)len;
    /* from the right: find the end of the last non-space char */
    size_t last = a;
    for (size_t i = a; i < e;) {
        if (py_space_at(s, n, i, &len)) i += (size_t)len;
        else {
            i++;
            while (i < e && ((unsigned char)s[i] & 0xC0) == 0x80) i++;
            last = i;
        }
    }
    sb_addn(b, s + a, last - a);
}

/* Python's json.dumps(s, ensure_ascii=False): transformers' tojson filter,
 * which Llama 3.1's template applies to tool results (a string is
 * "iterable" to Jinja). */
static void sb_add_json(sb *b, const char *s)
{
    sb_add(b, "\"");
    for (const char *run = s;; s++) {
        unsigned char c = (unsigned char)*s;
        if (c && c != '"' && c != '\\' && c >= 0x20) continue;
        sb_addn(b, run, (size_t)(s - run));
        if (!c) break;
        char u[8];
        switch (c) {
        case '"': sb_add(b, "\\\""); break;
        case '\\': sb_add(b, "\\\\"); break;
        case '\n': sb_add(b, "\\n"); break;
        case '\r': sb_add(b, "\\r"); break;
        case '\t': sb_add(b, "\\t"); break;
        case '\b': sb_add(b, "\\b"); break;
        case '\f': sb_add(b, "\\f"); break;
        default:
            snprintf(u, sizeof u, "\\u%04x", c);
            sb_add(b, u);
        }
        run = s + 1;
    }
    sb_add(b, "\"");
}

/* ---- helpers ------------------------------------------------------------ */

static void set_err(char *err, size_t errlen, const char *fmt, ...)
{
    if (!err || !errlen) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

static const char *role_of(const chat_msg *m)
{
    return strcmp(m->role, "developer") == 0 ? "system" : m->role;
}

static const char *content_of(const chat_msg *m) { return m->content ? m->content : ""; }

static int is_role(const chat_msg *m, const char *r) { return strcmp(role_of(m), r) == 0; }

/* The default system prompt a ChatML template writes when the conversation
 * has none (SmolLM2, Qwen2): the literal text of "<|im_start|>system\n ...
 * <|im_end|>" inside a template string.  Malloc'd, or NULL. */
static char *chatml_default_system(const char *tmpl)
{
    static const char needle[] = "<|im_start|>system";
    for (const char *p = strstr(tmpl, needle); p; p = strstr(p + 1, needle)) {
        const char *q = p + sizeof(needle) - 1;
        if (*q == '\n') q++;
        else if (q[0] == '\\' && q[1] == 'n') q += 2;
        else continue;
        const char *end = strstr(q, "<|im_end|>");
        if (!end) return NULL;
        /* a quote or a brace means the text is an expression, not a literal */
        if (memchr(q, '\'', (size_t)(end - q)) || memchr(q, '"', (size_t)(end - q)) ||
            memchr(q, '{', (size_t)(end - q)) || memchr(q, '}', (size_t)(end - q)))
            continue;
        char *out = malloc((size_t)(end - q) + 1), *o = out;
        if (!out) return NULL;
        for (const char *s = q; s < end; s++) {
            if (*s == '\\' && s + 1 < end) {
                s++;
                *o++ = *s == 'n' ? '\n' : *s == 't' ? '\t' : *s;
            } else *o++ = *s;
        }
        *o = 0;
        return out;
    }
    return NULL;
}

/* ---- the families ------------------------------------------------------- */

static int render_chatml(sb *b, const char *tmpl, const chat_msg *m, int n, int add_gen)
{
    if (n > 0 && !is_role(&m[0], "system")) {
        char *def = chatml_default_system(tmpl);
        if (def) {
            sb_add(b, "<|im_start|>system\n");
            sb_add(b, def);
            sb_add(b, "<|im_end|>\n");
            free(def);
        }
    }
    for (int i = 0; i < n; i++) {
        sb_add(b, "<|im_start|>");
        sb_add(b, role_of(&m[i]));
        sb_add(b, "\n");
        sb_add(b, content_of(&m[i]));
        sb_add(b, "<|im_end|>\n");
    }
    if (add_gen) sb_add(b, "<|im_start|>assistant\n");
    return 0;
}

/* One Llama 3 turn: header, trimmed content, end of turn. */
static void llama3_turn(sb *b, const chat_msg *m)
{
    sb_add(b, "<|start_header_id|>");
    sb_add(b, role_of(m));
    sb_add(b, "<|end_header_id|>\n\n");
    sb_add_stripped(b, content_of(m));
    sb_add(b, "<|eot_id|>");
}

static int render_llama3(sb *b, const char *bos, const chat_msg *m, int n, int add_gen)
{
    for (int i = 0; i < n; i++) {
        if (i == 0) sb_add(b, bos);
        llama3_turn(b, &m[i]);
    }
    if (add_gen) sb_add(b, "<|start_header_id|>assistant<|end_header_id|>\n\n");
    return 0;
}

/* The "Today Date" of a Llama 3.1+ system block.  Templates that call
 * strftime_now (3.2's), which transformers defines, get today's date:
 * in UTC (transformers takes the host's local time), with English month
 * names whatever the locale.  The others (3.1's, 3.3's) get their
 * date_string default, "26 Jul 2024". */
static void llama31_date(const char *tmpl, char *out, size_t len)
{
    static const char *const mon[] = {"Jan", "Feb", "Mar", "Apr", "May", "Jun",
                                      "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};
    static const char needle[] = "set date_string = \"";
    if (strstr(tmpl, "strftime_now")) {
        time_t now = time(NULL);
        struct tm tm;
        if (gmtime_r(&now, &tm)) {
            snprintf(out, len, "%02d %s %04d", tm.tm_mday, mon[tm.tm_mon], tm.tm_year + 1900);
            return;
        }
    }
    snprintf(out, len, "26 Jul 2024");
    const char *p = strstr(tmpl, needle);
    if (!p) return;
    p += sizeof(needle) - 1;
    size_t n = strcspn(p, "\"{}\\");
    if (p[n] == '"' && n < len) snprintf(out, len, "%.*s", (int)n, p);
}

/* Llama 3.1, 3.2, 3.3 without tools: a system block with the knowledge
 * cutoff, the date and the (trimmed) system message, always; then the
 * turns as in Llama 3, except tool results, which go under "ipython" as
 * JSON strings, untrimmed. */
static int render_llama31(sb *b, const char *tmpl, const char *bos, const chat_msg *m, int n,
                          int add_gen)
{
    char date[32];
    llama31_date(tmpl, date, sizeof date);
    int start = n > 0 && is_role(&m[0], "system");
    sb_add(b, bos);
    sb_add(b, "<|start_header_id|>system<|end_header_id|>\n\nCutting Knowledge Date: December 2023\n"
              "Today Date: ");
    sb_add(b, date);
    sb_add(b, "\n\n");
    if (start) sb_add_stripped(b, content_of(&m[0]));
    sb_add(b, "<|eot_id|>");
    for (int i = start; i < n; i++) {
        if (!strcmp(m[i].role, "tool") || !strcmp(m[i].role, "ipython")) {
            sb_add(b, "<|start_header_id|>ipython<|end_header_id|>\n\n");
            sb_add_json(b, content_of(&m[i]));
            sb_add(b, "<|eot_id|>");
        } else {
            llama3_turn(b, &m[i]);
        }
    }
    if (add_gen) sb_add(b, "<|start_header_id|>assistant<|end_header_id|>\n\n");
    return 0;
}

/* Gemma 2 and 3: "<start_of_turn>role\ncontent<end_of_turn>\n", the
 * assistant called "model", contents trimmed.  Turns alternate from a user
 * one: user at even places, anything else at odd ones.  Gemma 3 puts a
 * leading system message, untrimmed, before the first turn's content;
 * Gemma 2's template (and Gemma 1's) refuses it. */
static int render_gemma(sb *b, const char *tmpl, const char *bos, const chat_msg *m, int n,
                        int add_gen, char *err, size_t errlen)
{
    int start = n > 0 && is_role(&m[0], "system");
    if (start && strstr(tmpl, "System role not supported")) {
        set_err(err, errlen, "chat: the Gemma template takes no system message");
        return -1;
    }
    for (int i = start; i < n; i++)
        if (is_role(&m[i], "user") != ((i - start) % 2 == 0)) {
            set_err(err, errlen, "chat: the Gemma template takes user and assistant turns in "
                    "alternation, from a user one; message %d is '%s'", i, m[i].role);
            return -1;
        }
    sb_add(b, bos);
    for (int i = start; i < n; i++) {
        sb_add(b, "<start_of_turn>");
        sb_add(b, is_role(&m[i], "assistant") ? "model" : role_of(&m[i]));
        sb_add(b, "\n");
        if (i == start && start) {
            sb_add(b, content_of(&m[0]));
            sb_add(b, "\n\n");
        }
        sb_add_stripped(b, content_of(&m[i]));
        sb_add(b, "<end_of_turn>\n");
    }
    if (add_gen) sb_add(b, "<start_of_turn>model\n");
    return 0;
}

/* An assistant turn as DeepSeek-R1 writes it back: only what follows the
 * last "</think>", so earlier reasoning does not fill the context. */
static const char *after_think(const char *s)
{
    for (const char *p; (p = strstr(s, "</think>"));) s = p + 8;
    return s;
}

/* DeepSeek-R1's distills (Qwen and Llama): BOS, the last system message
 * alone (the template keeps no other), then "<|User|>" + content and
 * "<|Assistant|>" + what follows the content's last "</think>" + "<|end of
 * sentence|>"; other roles write nothing.  Tool results open an outputs
 * block (the first ever with its begin marker, later ones a newline) that
 * a user turn leaves open and an assistant turn closes, its content then
 * kept whole; still open at the end, it is closed in place of the
 * generation prompt.  The template's current revision opens the reply
 * with "<think>\n", its first did not. */
static void render_deepseek_r1(sb *b, const char *tmpl, const char *bos, const chat_msg *m, int n,
                               int add_gen)
{
    const char *system = "";
    for (int i = 0; i < n; i++)
        if (is_role(&m[i], "system")) system = content_of(&m[i]);
    sb_add(b, bos);
    sb_add(b, system);
    int in_tool = 0, first_output = 1;
    for (int i = 0; i < n; i++) {
        const char *c = content_of(&m[i]);
        if (is_role(&m[i], "user")) {
            in_tool = 0;
            sb_add(b, DS_USER);
            sb_add(b, c);
        } else if (is_role(&m[i], "assistant")) {
            sb_add(b, in_tool ? DS_OUTPUTS_END : DS_ASSISTANT);
            sb_add(b, in_tool ? c : after_think(c));
            sb_add(b, DS_EOS);
            in_tool = 0;
        } else if (is_role(&m[i], "tool")) {
            in_tool = 1;
            sb_add(b, first_output ? DS_OUTPUTS_BEGIN DS_OUTPUT_BEGIN : "\n" DS_OUTPUT_BEGIN);
            sb_add(b, c);
            sb_add(b, DS_OUTPUT_END);
            first_output = 0;
        }
    }
    if (in_tool) {
        sb_add(b, DS_OUTPUTS_END);
    } else if (add_gen) {
        sb_add(b, DS_ASSISTANT);
        if (strstr(tmpl, DS_ASSISTANT "<think>")) sb_add(b, "<think>\n");
    }
}

/* Llama-2 and Mistral take one leading system message and then user and
 * assistant turns. */
static int inst_roles(const chat_msg *m, int n, const char *name, char *err, size_t errlen)
{
    for (int i = 0; i < n; i++) {
        if (i == 0 && is_role(&m[i], "system")) continue;
        if (!is_role(&m[i], "user") && !is_role(&m[i], "assistant")) {
            set_err(err, errlen, "chat: the %s template takes one leading system message, then "
                    "user and assistant turns; message %d is '%s'", name, i, m[i].role);
            return -1;
        }
    }
    return 0;
}

static int render_llama2(sb *b, const char *bos, const char *eos, const chat_msg *m, int n,
                         char *err, size_t errlen)
{
    if (inst_roles(m, n, "Llama-2", err, errlen)) return -1;
    int start = n > 0 && is_role(&m[0], "system");
    for (int i = start; i < n; i++) {
        sb c = {0};
        if (i == start && start) {
            sb_add(&c, "<<SYS>>\n");
            sb_add(&c, content_of(&m[0]));
            sb_add(&c, "\n<</SYS>>\n\n");
        }
        sb_add(&c, content_of(&m[i]));
        if (c.oom) {
            free(c.s);
            b->oom = 1;
            return 0;
        }
        if (is_role(&m[i], "user")) {
            sb_add(b, bos);
            sb_add(b, "[INST] ");
            sb_add_stripped(b, c.s);
            sb_add(b, " [/INST]");
        } else {
            sb_add(b, " ");
            sb_add_stripped(b, c.s);
            sb_add(b, " ");
            sb_add(b, eos);
        }
        free(c.s);
    }
    return 0;
}

static int render_mistral(sb *b, const char *bos, const char *eos, const chat_msg *m, int n,
                          char *err, size_t errlen)
{
    if (inst_roles(m, n, "Mistral", err, errlen)) return -1;
    int start = n > 0 && is_role(&m[0], "system");
    sb_add(b, bos);
    for (int i = start; i < n; i++) {
        if (is_role(&m[i], "user")) {
            sb_add(b, " [INST] ");
            if (i == start && start) {
                sb_add(b, content_of(&m[0]));
                sb_add(b, "\n\n");
            }
            sb_add(b, content_of(&m[i]));
            sb_add(b, " [/INST]");
        } else {
            sb_add(b, " ");
            sb_add(b, content_of(&m[i]));
            sb_add(b, eos);
        }
    }
    return 0;
}

static int render_zephyr(sb *b, const char *eos, const chat_msg *m, int n, int add_gen,
                         char *err, size_t errlen)
{
    for (int i = 0; i < n; i++) {
        const char *r = role_of(&m[i]);
        if (strcmp(r, "system") && strcmp(r, "user") && strcmp(r, "assistant")) {
            set_err(err, errlen, "chat: the Zephyr template has no role '%s'", m[i].role);
            return -1;
        }
        sb_add(b, "<|");
        sb_add(b, r);
        sb_add(b, "|>\n");
        sb_add(b, content_of(&m[i]));
        sb_add(b, eos);
        sb_add(b, "\n");
        if (i == n - 1 && add_gen) sb_add(b, "<|assistant|>\n");
    }
    return 0;
}

/* Phi-3: "<|role|>\ncontent<|end|>\n" for system, user and assistant (the
 * template drops other roles; Phi-3.5's drops an empty system message
 * too), then "<|assistant|>\n" or, without a generation prompt, eos. */
static void render_phi3(sb *b, const char *tmpl, const char *eos, const chat_msg *m, int n, int add_gen)
{
    int skip_empty_system = strstr(tmpl, "'system' and message['content']") != NULL;
    for (int i = 0; i < n; i++) {
        const char *r = role_of(&m[i]);
        if (strcmp(r, "system") && strcmp(r, "user") && strcmp(r, "assistant"))
            continue;
        if (!strcmp(r, "system") && skip_empty_system && !content_of(&m[i])[0])
            continue;
        sb_add(b, "<|");
        sb_add(b, r);
        sb_add(b, "|>\n");
        sb_add(b, content_of(&m[i]));
        sb_add(b, "<|end|>\n");
    }
    sb_add(b, add_gen ? "<|assistant|>\n" : eos);
}

/* No template: "System: ...\nUser: ...\nAssistant:" */
static int render_plain(sb *b, const chat_msg *m, int n, int add_gen)
{
    for (int i = 0; i < n; i++) {
        const char *r = role_of(&m[i]);
        char first = r[0] >= 'a' && r[0] <= 'z' ? (char)(r[0] - 32) : r[0];
        if (first) {
            sb_addn(b, &first, 1);
            sb_add(b, r + 1);
        }
        sb_add(b, ": ");
        sb_add(b, content_of(&m[i]));
        sb_add(b, "\n");
    }
    if (add_gen) sb_add(b, "Assistant:");
    return 0;
}

char *chat_render_template(const char *tmpl, const char *bos, const char *eos,
                           const chat_msg *msgs, int n, int add_generation_prompt,
                           char *err, size_t errlen)
{
    if (n < 0 || (n > 0 && !msgs)) {
        set_err(err, errlen, "chat: no messages");
        return NULL;
    }
    for (int i = 0; i < n; i++)
        if (!msgs[i].role || !msgs[i].role[0]) {
            set_err(err, errlen, "chat: message %d has no role", i);
            return NULL;
        }
    if (!bos) bos = "";
    if (!eos) eos = "";
    sb b = {0};
    sb_add(&b, "");     /* an empty conversation still gives a string */
    int rc = 0;
    switch (family(tmpl)) {
    case FAM_CHATML: rc = render_chatml(&b, tmpl, msgs, n, add_generation_prompt); break;
    case FAM_LLAMA3: rc = render_llama3(&b, bos, msgs, n, add_generation_prompt); break;
    case FAM_LLAMA31: rc = render_llama31(&b, tmpl, bos, msgs, n, add_generation_prompt); break;
    case FAM_LLAMA2: rc = render_llama2(&b, bos, eos, msgs, n, err, errlen); break;
    case FAM_MISTRAL: rc = render_mistral(&b, bos, eos, msgs, n, err, errlen); break;
    case FAM_ZEPHYR: rc = render_zephyr(&b, eos, msgs, n, add_generation_prompt, err, errlen); break;
    case FAM_PHI3: render_phi3(&b, tmpl, eos, msgs, n, add_generation_prompt); break;
    case FAM_GEMMA:
        rc = render_gemma(&b, tmpl, bos, msgs, n, add_generation_prompt, err, errlen);
        break;
    case FAM_DEEPSEEK_R1: render_deepseek_r1(&b, tmpl, bos, msgs, n, add_generation_prompt); break;
    default: rc = render_plain(&b, msgs, n, add_generation_prompt); break;
    }
    if (rc == 0 && b.oom) {
        set_err(err, errlen, "chat: out of memory");
        rc = -1;
    }
    if (rc != 0) {
        free(b.s);
        return NULL;
    }
    return b.s;
}

char *engine_chat_render(const engine *e, const chat_msg *msgs, int n,
                         int add_generation_prompt, char *err, size_t errlen)
{
    const tokenizer *t = engine_tok(e);
    const char *bos = tokenizer_token_text(t, tokenizer_bos(t));
    const char *eos = tokenizer_token_text(t, tokenizer_eos(t));
    return chat_render_template(engine_get_info(e)->chat_template, bos, eos, msgs, n,
                                add_generation_prompt, err, errlen);
}
