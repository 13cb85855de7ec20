/* Chat templates against jinja2's rendering of the published template texts
 * (tests/data/tokenizer/chat.tsv, written by tools/tokref.py), refusals
 * where the template raises, family detection, the plain fallback, errors,
 * and engine_chat_render on real models. */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "engine/internal.h"

static char path_buf[4096];

static const char *root_path(const char *rel)
{
    const char *root = getenv("SPARSED_ROOT");
    snprintf(path_buf, sizeof path_buf, "%s/%s", root ? root : ".", rel);
    return path_buf;
}

/* Undoes tools/tokref.py's esc(). */
static char *unescape(const char *s)
{
    char *out = malloc(strlen(s) + 1), *o = out;
    while (*s) {
        if (*s != '\\') {
            *o++ = *s++;
            continue;
        }
        s++;
        switch (*s) {
        case 't': *o++ = '\t'; s++; break;
        case 'n': *o++ = '\n'; s++; break;
        case 'r': *o++ = '\r'; s++; break;
        case 'x': {
            unsigned v;
            sscanf(s + 1, "%2x", &v);
            *o++ = (char)v;
            s += 3;
            break;
        }
        default: *o++ = *s++; break;
        }
    }
    *o = 0;
    return out;
}

#define MAXF 32

/* Splits a line at tabs into unescaped fields; returns the count. */
static int fields(char *line, char **f)
{
    int n = 0;
    for (char *p = line;;) {
        char *tab = strchr(p, '\t');
        if (tab) *tab = 0;
        ck_assert(n < MAXF);
        f[n++] = unescape(p);
        if (!tab) break;
        p = tab + 1;
    }
    return n;
}

typedef struct tmpl {
    char *name, *bos, *eos, *text;
} tmpl;

static tmpl tmpls[32];
static int n_tmpls;

static const tmpl *find_tmpl(const char *name)
{
    for (int i = 0; i < n_tmpls; i++)
        if (strcmp(tmpls[i].name, name) == 0) return &tmpls[i];
    ck_abort_msg("no template %s", name);
    return NULL;
}

/* Calls fn for every C line, and with want NULL for every E line (the
 * template refuses), after loading the T lines before it. */
static int each_case(void (*fn)(const tmpl *, int, const char *, const chat_msg *, int, void *),
                     void *ctx)
{
    FILE *f = fopen(root_path("tests/data/tokenizer/chat.tsv"), "r");
    ck_assert_msg(f != NULL, "cannot open %s", path_buf);
    char *line = NULL;
    size_t cap = 0;
    ssize_t got;
    int cases = 0;
    n_tmpls = 0;
    while ((got = getline(&line, &cap, f)) > 0) {
        if (line[0] == '#') continue;
        if (line[got - 1] == '\n') line[got - 1] = 0;
        char *fv[MAXF];
        int nf = fields(line, fv);
        if (strcmp(fv[0], "T") == 0) {
            ck_assert_int_eq(nf, 5);
            ck_assert(n_tmpls < 32);
            tmpls[n_tmpls++] = (tmpl){fv[1], fv[2], fv[3], fv[4]};
            free(fv[0]);
            continue;
        }
        int refused = strcmp(fv[0], "E") == 0;
        ck_assert_msg(refused || strcmp(fv[0], "C") == 0, "line kind %s", fv[0]);
        ck_assert(nf >= 6 && nf % 2 == 0);
        chat_msg msgs[MAXF / 2];
        int n = 0;
        for (int i = 4; i < nf; i += 2) msgs[n++] = (chat_msg){fv[i], fv[i + 1]};
        fn(find_tmpl(fv[1]), atoi(fv[2]), refused ? NULL : fv[3], msgs, n, ctx);
        cases++;
        for (int i = 0; i < nf; i++) free(fv[i]);
    }
    free(line);
    fclose(f);
    return cases;
}

static void free_tmpls(void)
{
    for (int i = 0; i < n_tmpls; i++) {
        free(tmpls[i].name);
        free(tmpls[i].bos);
        free(tmpls[i].eos);
        free(tmpls[i].text);
    }
    n_tmpls = 0;
}

/* tools/tokref.py's strftime_now answers for 2025-03-09; chat.c gives
 * today's date (UTC) where a template calls it (Llama 3.2). */
#define REF_DATE "09 Mar 2025"

static void today(char *out, size_t len)
{
    time_t now = time(NULL);
    struct tm tm;
    ck_assert(gmtime_r(&now, &tm));
    strftime(out, len, "%d %b %Y", &tm);
}

/* want with every REF_DATE replaced by date; malloc'd. */
static char *with_date(const char *want, const char *date)
{
    size_t k = 0, rl = strlen(REF_DATE);
    for (const char *p = want; (p = strstr(p, REF_DATE)); p += rl) k++;
    char *out = malloc(strlen(want) + k * strlen(date) + 1), *o = out;
    const char *p = want;
    for (const char *q; (q = strstr(p, REF_DATE)); p = q + rl) {
        memcpy(o, p, (size_t)(q - p));
        o = stpcpy(o + (q - p), date);
    }
    strcpy(o, p);
    return out;
}

static void check_render(const tmpl *t, int add_gen, const char *want, const chat_msg *m, int n,
                         void *ctx)
{
    (void)ctx;
    char err[256] = "", before[32], after[32];
    char *got;
    /* a render that straddles midnight is done again */
    do {
        today(before, sizeof before);
        got = chat_render_template(t->text, t->bos, t->eos, m, n, add_gen, err, sizeof err);
        today(after, sizeof after);
        if (strcmp(before, after)) free(got);
    } while (strcmp(before, after));
    if (!want) {
        ck_assert_msg(got == NULL, "%s (add_gen %d, %d messages): the template refuses, chat.c "
                      "gave \"%s\"", t->name, add_gen, n, got);
        ck_assert_msg(err[0], "%s: refused without a message", t->name);
        return;
    }
    ck_assert_msg(got != NULL, "%s: %s", t->name, err);
    char *w = strstr(t->text, "strftime_now") ? with_date(want, before) : strdup(want);
    ck_assert_msg(strcmp(got, w) == 0, "%s (add_gen %d, %d messages):\ngot  \"%s\"\nwant \"%s\"",
                  t->name, add_gen, n, got, w);
    free(w);
    free(got);
}

START_TEST(reference_renderings)
{
    int n = each_case(check_render, NULL);
    ck_assert_int_ge(n, 200);
    /* every family was covered, SmolLM2's own template text included */
    static const char *const want[][2] = {
        {"chatml", "chatml"}, {"qwen2", "chatml"}, {"llama3", "llama3"}, {"llama2", "llama2"},
        {"mistral", "mistral"}, {"zephyr", "zephyr"}, {"smollm2", "chatml"}, {"phi3", "phi3"},
        {"phi3.5", "phi3"}, {"llama3.1", "llama3.1"}, {"llama3.2", "llama3.1"},
        {"gemma2", "gemma"}, {"gemma3", "gemma"}, {"deepseek-r1", "deepseek-r1"},
        {"deepseek-r1-first", "deepseek-r1"},
    };
    for (size_t i = 0; i < sizeof(want) / sizeof(want[0]); i++)
        ck_assert_str_eq(chat_template_family(find_tmpl(want[i][0])->text), want[i][1]);
    free_tmpls();
}
END_TEST

/* Phi-3's template renders nothing for roles other than system, user and
 * assistant (tool results, say), where Zephyr's, whose text is alike,
 * is refused with a message. */
static void no_check(const tmpl *t, int add_gen, const char *want, const chat_msg *m, int n, void *ctx)
{
    (void)t, (void)add_gen, (void)want, (void)m, (void)n, (void)ctx;
}

START_TEST(phi3_drops_other_roles)
{
    chat_msg m[] = {{"user", "2+2?"}, {"tool", "4"}, {"assistant", "4."}};
    each_case(no_check, NULL);      /* loads the templates */
    char err[128] = "";
    char *s = chat_render_template(find_tmpl("phi3")->text, "<s>", "<|endoftext|>", m, 3, 1, err, sizeof err);
    ck_assert_str_eq(s, "<|user|>\n2+2?<|end|>\n<|assistant|>\n4.<|end|>\n<|assistant|>\n");
    free(s);
    ck_assert_ptr_null(chat_render_template(find_tmpl("zephyr")->text, "<s>", "</s>", m, 3, 1, err, sizeof err));
    ck_assert_msg(strstr(err, "no role 'tool'"), "%s", err);
    free_tmpls();
}
END_TEST

START_TEST(plain_fallback)
{
    chat_msg m[] = {{"system", "Be brief."}, {"user", "Hi"}, {"assistant", "Hello."},
                    {"developer", "d"}, {"tool", "42"}};
    char err[128];
    ck_assert_str_eq(chat_template_family(NULL), "plain");
    ck_assert_str_eq(chat_template_family("{{ messages }}"), "plain");
    char *s = chat_render_template(NULL, "", "", m, 5, 1, err, sizeof err);
    ck_assert_str_eq(s, "System: Be brief.\nUser: Hi\nAssistant: Hello.\nSystem: d\nTool: 42\n"
                        "Assistant:");
    free(s);
    s = chat_render_template("{% for m in messages %}{{ m }}{% endfor %}", NULL, NULL, m + 1, 1,
                             0, err, sizeof err);
    ck_assert_str_eq(s, "User: Hi\n");
    free(s);
    /* an empty conversation still renders (only the generation prompt) */
    s = chat_render_template(NULL, "", "", NULL, 0, 1, err, sizeof err);
    ck_assert_str_eq(s, "Assistant:");
    free(s);
    /* ChatML lets any role through, and NULL content is empty */
    chat_msg tool[] = {{"tool", NULL}};
    s = chat_render_template("<|im_start|>", "", "", tool, 1, 0, err, sizeof err);
    ck_assert_str_eq(s, "<|im_start|>tool\n<|im_end|>\n");
    free(s);
}
END_TEST

START_TEST(default_system_prompt)
{
    char err[128];
    chat_msg u[] = {{"user", "Hi"}};
    /* escaped newline and a quote-free literal: taken as the default */
    char *s = chat_render_template(
        "{% if messages[0]['role'] != 'system' %}{{ '<|im_start|>system\\nYou are \\\\n ok.<|im_end|>\\n' }}"
        "{% endif %}",
        "", "", u, 1, 0, err, sizeof err);
    ck_assert_str_eq(s, "<|im_start|>system\nYou are \\n ok.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n");
    free(s);
    /* an expression after the header is no default */
    s = chat_render_template("{{ '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>' }}",
                             "", "", u, 1, 0, err, sizeof err);
    ck_assert_str_eq(s, "<|im_start|>user\nHi<|im_end|>\n");
    free(s);
    /* Qwen2.5's shape: the literal default comes after the expression */
    s = chat_render_template(
        "{%- if messages[0]['role'] == 'system' %}{{- '<|im_start|>system\\n' + messages[0]['content'] + "
        "'<|im_end|>\\n' }}{%- else %}{{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. "
        "You are a helpful assistant.<|im_end|>\\n' }}{%- endif %}",
        "", "", u, 1, 1, err, sizeof err);
    ck_assert_str_eq(s, "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a "
                        "helpful assistant.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
                        "<|im_start|>assistant\n");
    free(s);
}
END_TEST

START_TEST(errors)
{
    char err[256];
    chat_msg noroles[] = {{NULL, "x"}};
    ck_assert_ptr_null(chat_render_template(NULL, "", "", noroles, 1, 1, err, sizeof err));
    ck_assert(strstr(err, "no role"));
    ck_assert_ptr_null(chat_render_template(NULL, "", "", NULL, 2, 1, err, sizeof err));
    ck_assert(strstr(err, "no messages"));
    chat_msg late_system[] = {{"user", "a"}, {"system", "b"}};
    ck_assert_ptr_null(chat_render_template("[INST] <<SYS>>", "<s>", "</s>", late_system, 2, 1,
                                            err, sizeof err));
    ck_assert(strstr(err, "Llama-2") && strstr(err, "message 1"));
    chat_msg tool[] = {{"user", "a"}, {"tool", "b"}};
    ck_assert_ptr_null(chat_render_template("[INST]", "<s>", "</s>", tool, 2, 1, err, sizeof err));
    ck_assert(strstr(err, "Mistral") && strstr(err, "'tool'"));
    ck_assert_ptr_null(chat_render_template("<|user|>", "<s>", "</s>", tool, 2, 1, err, sizeof err));
    ck_assert(strstr(err, "Zephyr"));
}
END_TEST

/* Llama 3.1's date: the template's date_string default, else Llama 3.1's;
 * and the tool/ipython turns' JSON escapes for bytes no reference has. */
START_TEST(llama31_date_and_json)
{
    chat_msg m[] = {{"tool", "\x1e\"\x7f"}};
    char err[128];
    char *s = chat_render_template("<|start_header_id|>Cutting Knowledge Date"
                                   "{%- set date_string = \"01 Jan 2030\" %}", "", "", m, 1, 0,
                                   err, sizeof err);
    ck_assert_str_eq(s, "<|start_header_id|>system<|end_header_id|>\n\nCutting Knowledge Date: "
                        "December 2023\nToday Date: 01 Jan 2030\n\n<|eot_id|>"
                        "<|start_header_id|>ipython<|end_header_id|>\n\n\"\\u001e\\\"\x7f\"<|eot_id|>");
    free(s);
    /* an expression is no default; an empty conversation keeps the block */
    s = chat_render_template("<|start_header_id|>Cutting Knowledge Date {% set date_string = \"{{ x }}\" %}",
                             "<|begin_of_text|>", "", NULL, 0, 1, err, sizeof err);
    ck_assert_str_eq(s, "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nCutting "
                        "Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n<|eot_id|>"
                        "<|start_header_id|>assistant<|end_header_id|>\n\n");
    free(s);
}
END_TEST

START_TEST(gemma_refusals)
{
    char err[256];
    chat_msg sys[] = {{"developer", "Be brief."}, {"user", "Hi"}};
    ck_assert_ptr_null(chat_render_template("{{ raise_exception('System role not supported') }}"
                                            "<start_of_turn>", "<bos>", "<eos>", sys, 2, 1, err, sizeof err));
    ck_assert_msg(strstr(err, "Gemma") && strstr(err, "system"), "%s", err);
    char *s = chat_render_template("<start_of_turn>", "<bos>", "<eos>", sys, 2, 1, err, sizeof err);
    ck_assert_str_eq(s, "<bos><start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n<start_of_turn>model\n");
    free(s);
    /* after the system message, turn 0 must be the user's */
    chat_msg order[] = {{"system", "s"}, {"user", "a"}, {"tool", "b"}, {"tool", "c"}};
    ck_assert_ptr_null(chat_render_template("<start_of_turn>", "", "", order, 4, 0, err, sizeof err));
    ck_assert_msg(strstr(err, "message 3 is 'tool'"), "%s", err);
    ck_assert_ptr_null(chat_render_template("<start_of_turn>", "", "", order + 2, 1, 0, err, sizeof err));
    ck_assert_msg(strstr(err, "message 0 is 'tool'"), "%s", err);
    s = chat_render_template("<start_of_turn>", "", "", order, 3, 0, err, sizeof err);
    ck_assert_str_eq(s, "<start_of_turn>user\ns\n\na<end_of_turn>\n<start_of_turn>tool\nb<end_of_turn>\n");
    free(s);
}
END_TEST

/* DeepSeek-R1 by its markers alone: both are needed, the reply opens with
 * "<think>\n" only where the template writes it, and NULL content is empty. */
START_TEST(deepseek_r1_telltales)
{
    char err[128];
    chat_msg m[] = {{"user", NULL}, {"assistant", "a</think>b"}, {"user", "c"}};
    ck_assert_str_eq(chat_template_family("<\uff5cUser\uff5c>"), "plain");
    char *s = chat_render_template("<\uff5cUser\uff5c><\uff5cAssistant\uff5c>", "<s>", "</s>", m, 3,
                                   1, err, sizeof err);
    ck_assert_str_eq(s, "<s><\uff5cUser\uff5c><\uff5cAssistant\uff5c>b<\uff5cend\u2581of\u2581"
                        "sentence\uff5c><\uff5cUser\uff5c>c<\uff5cAssistant\uff5c>");
    free(s);
    s = chat_render_template("<\uff5cUser\uff5c>{{'<\uff5cAssistant\uff5c><think>\\n'}}", NULL,
                             NULL, m + 2, 1, 1, err, sizeof err);
    ck_assert_str_eq(s, "<\uff5cUser\uff5c>c<\uff5cAssistant\uff5c><think>\n");
    free(s);
}
END_TEST

/* ---- through the engine -------------------------------------------------- */

static engine *open_engine(const char *rel)
{
    FILE *f = fopen(root_path(rel), "rb");
    if (!f) {
        printf("test_chat: skipping: %s is absent (tools/fetch-models.sh fetches it)\n", path_buf);
        return NULL;
    }
    fclose(f);
    char err[256];
    engine_opts o = {.model_path = path_buf, .n_threads = 1};
    attn_config_default(&o.attn);
    engine *e = engine_create(&o, err, sizeof err);
    ck_assert_msg(e != NULL, "engine_create %s: %s", path_buf, err);
    return e;
}

static void check_engine_render(const tmpl *t, int add_gen, const char *want, const chat_msg *m,
                                int n, void *ctx)
{
    if (strcmp(t->name, "smollm2") != 0 || !want) return;
    engine *e = ctx;
    ck_assert_str_eq(engine_get_info(e)->chat_template, t->text);
    char err[256] = "";
    char *got = engine_chat_render(e, m, n, add_gen, err, sizeof err);
    ck_assert_msg(got != NULL, "%s", err);
    ck_assert_str_eq(got, want);
    free(got);
}

START_TEST(engine_smollm2)
{
    engine *e = open_engine(".cache/models/SmolLM2-135M-Instruct.Q4_1.gguf");
    if (!e) return;
    each_case(check_engine_render, e);
    free_tmpls();
    /* SmolLM2's default system prompt comes from its own template */
    chat_msg u[] = {{"user", "Hi"}};
    char err[128];
    char *s = engine_chat_render(e, u, 1, 1, err, sizeof err);
    ck_assert_str_eq(s, "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained "
                        "by Hugging Face<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
                        "<|im_start|>assistant\n");
    /* and the rendering tokenizes with the markers as single tokens */
    int32_t ids[64];
    int k = engine_tokenize(e, s, strlen(s), 0, 1, ids, 64);
    ck_assert_int_gt(k, 10);
    ck_assert_int_eq(ids[0], 1);                    /* <|im_start|> */
    ck_assert_int_eq(ids[k - 4], 1);               /* <|im_start|> assistant \n */
    free(s);
    engine_free(e);
}
END_TEST

START_TEST(engine_stories_plain)
{
    engine *e = open_engine("models/stories260K.gguf");
    ck_assert(e);                                   /* committed with the repo */
    ck_assert_ptr_null(engine_get_info(e)->chat_template);
    chat_msg m[] = {{"user", "Once upon a time"}};
    char err[128];
    char *s = engine_chat_render(e, m, 1, 1, err, sizeof err);
    ck_assert_str_eq(s, "User: Once upon a time\nAssistant:");
    free(s);
    engine_free(e);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("chat");
    TCase *tc = tcase_create("chat");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, reference_renderings);
    tcase_add_test(tc, phi3_drops_other_roles);
    tcase_add_test(tc, plain_fallback);
    tcase_add_test(tc, default_system_prompt);
    tcase_add_test(tc, errors);
    tcase_add_test(tc, llama31_date_and_json);
    tcase_add_test(tc, gemma_refusals);
    tcase_add_test(tc, deepseek_r1_telltales);
    tcase_add_test(tc, engine_smollm2);
    tcase_add_test(tc, engine_stories_plain);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
