#!/usr/bin/env python3
"""Writes the reference data the tokenizer and chat tests compare against
(tests/data/tokenizer/*.tsv), so the C tests need no Python.

Run in a venv with: pip install transformers tokenizers gguf jinja2
sentencepiece protobuf regex numpy (no torch needed).

    .venv/bin/python tools/tokref.py [--smollm PATH] [--stories PATH] [--chat-only]

--chat-only writes chat.tsv alone; it needs only jinja2 and gguf.

References, all built from the GGUF files themselves:
- SmolLM2 ("gpt2" vocab, pre "smollm"): the HF `tokenizers` BPE that
  transformers builds from a GGUF (integrations/gguf), with the model's own
  pre-tokenizer: Digits(individual_digits) then ByteLevel (what SmolLM2's
  tokenizer.json says and what llama.cpp's "smollm" split does).  transformers
  has no entry for "smollm" and would use the plain GPT-2 split; both are
  computed and any disagreement is printed.
- stories260K ("llama" vocab): SentencePiece itself, with a model proto made
  from the GGUF's pieces, scores and types (BPE, byte fallback, dummy prefix,
  no whitespace folding: the Llama settings).  Special tokens in the text are
  split out first and a dummy-prefix space is added after each one, as
  llama.cpp does for "llama" vocabs.
- Pre-tokenizer splits (gpt2, smollm, llama3, qwen2): the `regex` module with
  the published split regexes.
- Chat: jinja2 rendering of the template texts, set up as transformers'
  apply_chat_template sets it up (trim_blocks, lstrip_blocks, loop
  controls, its tojson filter, raise_exception, strftime_now, tools=None).
  strftime_now answers for FIXED_NOW, so the file stays put; the C test
  puts today's date in its place.  A conversation the template refuses
  (raise_exception) is an E line: chat.c must refuse it too.

Line formats (fields separated by TAB; text fields escaped: \\\\ \\t \\n \\r
and \\xHH for other control or invisible bytes):
  <name>.tsv   flags  text  ids          flags: S = parse_special, - = not;
                                         B = add_bos; N = no round trip
  pretok.tsv   pre    text  piece byte lengths
  chat.tsv     T  name  bos  eos  template
               C  name  add_gen  expected  role  content  [role content ...]
               E  name  add_gen  jinja's error  role  content  [role content ...]
"""
import argparse
import datetime
import os
import sys

from gguf import GGUFReader

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "tests", "data", "tokenizer")

CORPUS = [
    "Once upon a time",
    "Once upon a time, there was a little girl named Lily.",
    "Hello world",
    "Hello, World! How are you?",
    " leading space",
    "  two leading spaces",
    "trailing space ",
    "",
    "a",
    " ",
    "   ",
    "\n",
    "don't",
    "I'LL",
    "we've they're she'd I'm it's",
    "HE'S 'S'' ''' 'x",
    "1234567890",
    "3.14159265358979323846",
    "x=12345678901234567890;",
    "year 2024, 1,000,000 items",
    "\u0663\u0664\u0665 arabic-indic digits",
    "\u00bd \u00b2 \u00b3 \u216b",
    "caf\u00e9 na\u00efve r\u00e9sum\u00e9",
    "\u00dcn\u00efc\u00f6d\u00e9 Cr\u00e8me br\u00fbl\u00e9e",
    "e\u0301 combining acute",
    "\u65e5\u672c\u8a9e\u306e\u30c6\u30ad\u30b9\u30c8",
    "\u4e2d\u6587\u5206\u8bcd\u6d4b\u8bd5",
    "\ud55c\uad6d\uc5b4 \ud14d\uc2a4\ud2b8",
    "\U0001f600",
    "\U0001f44d\U0001f3fd ok",
    "\U0001f468\u200d\U0001f469\u200d\U0001f467\u200d\U0001f466 family",
    "\U0001f1eb\U0001f1f7 flag",
    "I \u2764\ufe0f NY",
    "def f(x):\n\treturn x * 2\n",
    "int main(void) {\n    printf(\"hi\\n\");\n    return 0;\n}\n",
    "    indented\n        more\n",
    "if (a&&b||c) { x += 1; }",
    "a  b   c    d",
    "line1\nline2\n\nline4\n\n\n",
    "\r\n windows\r\n",
    "\t\ttabs\t",
    "x \n y",
    "trailing\n  ",
    "\u00a0nbsp\u3000ideo\u2028ls",
    "\x1c\x1f\x85 ctl",
    "a\x04b\x06c \U000e0041 tag",
    "email@example.com https://example.org/path?q=1&r=2",
    "$100.00 (USD) #hashtag @user",
    "ALL CAPS SHOUTING",
    "MiXeD cAsE",
    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
    "========================================",
    "....!!!???",
    "\u03a9\u2248\u00e7\u221a\u222b\u02dc\u00b5\u2264\u2265\u00f7",
    "\u041f\u0440\u0438\u0432\u0435\u0442 \u043c\u0438\u0440",
    "\u0393\u03b5\u03b9\u03ac \u03c3\u03bf\u03c5 \u039a\u03cc\u03c3\u03bc\u03b5",
    "\u05e9\u05dc\u05d5\u05dd \u05e2\u05d5\u05dc\u05dd",
    "\u0645\u0631\u062d\u0628\u0627 \u0628\u0627\u0644\u0639\u0627\u0644\u0645",
    "\u0928\u092e\u0938\u094d\u0924\u0947 \u0926\u0941\u0928\u093f\u092f\u093e",
    "\u0e44\u0e17\u0e22",
    "The quick brown fox jumps over the lazy dog. She said, \"It's 5:30pm!\"",
    "<|im_start|>user\nHello<|im_end|>\n",
    "<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>assistant\n",
    "<|endoftext|>",
    "text<|im_end|>more",
    "<s>Once upon</s>",
    "<s> Once",
    "<unk>",
    "<|im_start",
    "<<|im_end|>>",
]


def esc(s):
    out = []
    for ch in s:
        o = ord(ch)
        if ch == "\\":
            out.append("\\\\")
        elif ch == "\t":
            out.append("\\t")
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\r":
            out.append("\\r")
        elif ch == " " or (o >= 0x21 and o < 0x7F) or (o > 0x7F and ch.isprintable()):
            out.append(ch)
        else:
            out.extend("\\x%02x" % b for b in ch.encode("utf-8"))
    return "".join(out)


def gguf_tokenizer(path):
    from transformers.integrations.gguf.gguf_tokenizer_mapping import GGUF_TOKENIZER_MAPPING
    r = GGUFReader(path)
    d = {}
    for key, name in GGUF_TOKENIZER_MAPPING["tokenizer"].items():
        f = r.fields.get("tokenizer." + key)
        if f is not None:
            d[name] = f.contents()
    meta = {k: f.contents() for k, f in r.fields.items()
            if not k.startswith("tokenizer.ggml.") or k.endswith("_id") or k.endswith("pre")
            or k.endswith("model") or k.startswith("tokenizer.ggml.add")}
    return r.fields["general.architecture"].contents(), d, meta


# ---- SmolLM2 (gpt2 vocab) --------------------------------------------------

def smollm_refs(path):
    from tokenizers import pre_tokenizers
    from transformers.integrations.gguf.gguf_tokenizer_mapping import convert_gguf_tokenizer
    arch, d, meta = gguf_tokenizer(path)
    assert d["tokenizer_type"] == "gpt2" and d["pre_tokenizer_type"] == "smollm"
    stock, _ = convert_gguf_tokenizer(arch, dict(d))
    ref, _ = convert_gguf_tokenizer(arch, dict(d))
    ref.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    rows = []
    for s in CORPUS:
        for special in (True, False):
            if not special and "<" not in s:
                continue
            ref.encode_special_tokens = not special
            stock.encode_special_tokens = not special
            ids = ref.encode(s, add_special_tokens=False).ids
            alt = stock.encode(s, add_special_tokens=False).ids
            if ids != alt:
                print("smollm: transformers' stock GGUF split differs on %r" % s, file=sys.stderr)
            flags = "S" if special else "-"
            if ref.decode(ids, skip_special_tokens=False) != s:
                flags += "N"    # the vocabulary cannot spell some bytes
            rows.append((flags, s, ids))
    bos = meta.get("tokenizer.ggml.bos_token_id")
    rows.append(("SB", "Hi", [bos] + ref.encode("Hi", add_special_tokens=False).ids))
    return rows


# ---- stories260K (llama vocab) ---------------------------------------------

def spm_processor(d, dummy_prefix):
    import sentencepiece as spm
    from sentencepiece import sentencepiece_model_pb2 as pb
    m = pb.ModelProto()
    kinds = {1: pb.ModelProto.SentencePiece.NORMAL, 2: pb.ModelProto.SentencePiece.UNKNOWN,
             3: pb.ModelProto.SentencePiece.CONTROL, 4: pb.ModelProto.SentencePiece.USER_DEFINED,
             5: pb.ModelProto.SentencePiece.UNUSED, 6: pb.ModelProto.SentencePiece.BYTE}
    for tok, score, ty in zip(d["tokens"], d["scores"], d["token_type"]):
        p = m.pieces.add()
        p.piece, p.score, p.type = tok, score, kinds[ty]
    m.trainer_spec.model_type = pb.TrainerSpec.BPE
    m.trainer_spec.byte_fallback = True
    m.trainer_spec.vocab_size = len(d["tokens"])
    m.normalizer_spec.name = "identity"
    m.normalizer_spec.add_dummy_prefix = dummy_prefix
    m.normalizer_spec.remove_extra_whitespaces = False
    m.normalizer_spec.escape_whitespaces = True
    sp = spm.SentencePieceProcessor()
    sp.LoadFromSerializedProto(m.SerializeToString())
    return sp


def llama_refs(path):
    arch, d, meta = gguf_tokenizer(path)
    assert d["tokenizer_type"] == "llama"
    with_prefix, no_prefix = spm_processor(d, True), spm_processor(d, False)
    # special: CONTROL, UNKNOWN (only when parsing specials) and USER_DEFINED
    specials = sorted(((t, i) for i, (t, ty) in enumerate(zip(d["tokens"], d["token_type"]))
                       if ty in (2, 3, 4) and t), key=lambda x: -len(x[0]))

    def encode(s, parse_special):
        out, frag, i, prev_special = [], [], 0, True

        def flush():
            nonlocal prev_special
            if frag:
                sp = with_prefix if prev_special else no_prefix
                out.extend(sp.encode("".join(frag)))
                frag.clear()
                prev_special = False
        while i < len(s):
            for t, tid in specials:
                if (parse_special or d["token_type"][tid] == 4) and s.startswith(t, i):
                    flush()
                    out.append(tid)
                    prev_special = True
                    i += len(t)
                    break
            else:
                frag.append(s[i])
                i += 1
        flush()
        return out

    rows = []
    for s in CORPUS:
        for special in (True, False):
            if not special and "<" not in s:
                continue
            rows.append(("S" if special else "-", s, encode(s, special)))
    bos = meta.get("tokenizer.ggml.bos_token_id")
    rows.append(("SB", "Hi", [bos] + encode("Hi", True)))
    return rows


# ---- pre-tokenizer splits --------------------------------------------------

GPT2 = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
LLAMA3 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
          r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
         r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
PRETOK = {"gpt2": [GPT2], "smollm": [r"\p{N}", GPT2], "llama3": [LLAMA3], "qwen2": [QWEN2]}


def split(pieces, pattern):
    """Each regex cuts every piece into matches and the text between them."""
    import regex
    out = []
    for p in pieces:
        pos = 0
        for m in regex.finditer(pattern, p):
            if m.start() > pos:
                out.append(p[pos:m.start()])
            out.append(m.group())
            pos = m.end()
        if pos < len(p):
            out.append(p[pos:])
    return out


def pretok_rows():
    rows = []
    for name, pats in PRETOK.items():
        for s in CORPUS:
            pieces = [s] if s else []
            for pat in pats:
                pieces = split(pieces, pat)
            assert "".join(pieces) == s
            rows.append((name, s, [len(p.encode("utf-8")) for p in pieces]))
    return rows


# ---- chat templates --------------------------------------------------------

# Template texts as the model repos publish them (tokenizer_config.json).
# The long ones come first, a line of template a line here.  Those of
# Llama-3.1-8B-Instruct (Llama-3.3-70B-Instruct's is the same text),
# Llama-3.2-3B-Instruct and gemma-2-2b-it are byte for byte the copies in
# llama.cpp's models/templates; gemma-3-1b-it's is the _CHAT_TEMPLATE of
# transformers' convert_gemma3_weights.py, the text its config carries.
LLAMA31 = (
    "{{- bos_token }}\n"
    "{%- if custom_tools is defined %}\n"
    "    {%- set tools = custom_tools %}\n"
    "{%- endif %}\n"
    "{%- if not tools_in_user_message is defined %}\n"
    "    {%- set tools_in_user_message = true %}\n"
    "{%- endif %}\n"
    "{%- if not date_string is defined %}\n"
    "    {%- set date_string = \"26 Jul 2024\" %}\n"
    "{%- endif %}\n"
    "{%- if not tools is defined %}\n"
    "    {%- set tools = none %}\n"
    "{%- endif %}\n"
    "\n"
    "{#- This block extracts the system message, so we can slot it into the right place. #}\n"
    "{%- if messages[0]['role'] == 'system' %}\n"
    "    {%- set system_message = messages[0]['content']|trim %}\n"
    "    {%- set messages = messages[1:] %}\n"
    "{%- else %}\n"
    "    {%- set system_message = \"\" %}\n"
    "{%- endif %}\n"
    "\n"
    "{#- System message + builtin tools #}\n"
    "{{- \"<|start_header_id|>system<|end_header_id|>\\n\\n\" }}\n"
    "{%- if builtin_tools is defined or tools is not none %}\n"
    "    {{- \"Environment: ipython\\n\" }}\n"
    "{%- endif %}\n"
    "{%- if builtin_tools is defined %}\n"
    "    {{- \"Tools: \" + builtin_tools | reject('equalto', 'code_interpreter') | join(\", \") + \"\\n\\n\"}}\n"
    "{%- endif %}\n"
    "{{- \"Cutting Knowledge Date: December 2023\\n\" }}\n"
    "{{- \"Today Date: \" + date_string + \"\\n\\n\" }}\n"
    "{%- if tools is not none and not tools_in_user_message %}\n"
    "    {{- \"You have access to the following functions. To call a function, please respond with JSON for a function call.\" }}\n"
    "    {{- 'Respond in the format {\"name\": function name, \"parameters\": dictionary of argument name and its value}.' }}\n"
    "    {{- \"Do not use variables.\\n\\n\" }}\n"
    "    {%- for t in tools %}\n"
    "        {{- t | tojson(indent=4) }}\n"
    "        {{- \"\\n\\n\" }}\n"
    "    {%- endfor %}\n"
    "{%- endif %}\n"
    "{{- system_message }}\n"
    "{{- \"<|eot_id|>\" }}\n"
    "\n"
    "{#- Custom tools are passed in a user message with some extra guidance #}\n"
    "{%- if tools_in_user_message and not tools is none %}\n"
    "    {#- Extract the first user message so we can plug it in here #}\n"
    "    {%- if messages | length != 0 %}\n"
    "        {%- set first_user_message = messages[0]['content']|trim %}\n"
    "        {%- set messages = messages[1:] %}\n"
    "    {%- else %}\n"
    "        {{- raise_exception(\"Cannot put tools in the first user message when there's no first user message!\") }}\n"
    "{%- endif %}\n"
    "    {{- '<|start_header_id|>user<|end_header_id|>\\n\\n' -}}\n"
    "    {{- \"Given the following functions, please respond with a JSON for a function call \" }}\n"
    "    {{- \"with its proper arguments that best answers the given prompt.\\n\\n\" }}\n"
    "    {{- 'Respond in the format {\"name\": function name, \"parameters\": dictionary of argument name and its value}.' }}\n"
    "    {{- \"Do not use variables.\\n\\n\" }}\n"
    "    {%- for t in tools %}\n"
    "        {{- t | tojson(indent=4) }}\n"
    "        {{- \"\\n\\n\" }}\n"
    "    {%- endfor %}\n"
    "    {{- first_user_message + \"<|eot_id|>\"}}\n"
    "{%- endif %}\n"
    "\n"
    "{%- for message in messages %}\n"
    "    {%- if not (message.role == 'ipython' or message.role == 'tool' or 'tool_calls' in message) %}\n"
    "        {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'+ message['content'] | trim + '<|eot_id|>' }}\n"
    "    {%- elif 'tool_calls' in message %}\n"
    "        {%- if not message.tool_calls|length == 1 %}\n"
    "            {{- raise_exception(\"This model only supports single tool-calls at once!\") }}\n"
    "        {%- endif %}\n"
    "        {%- set tool_call = message.tool_calls[0].function %}\n"
    "        {%- if builtin_tools is defined and tool_call.name in builtin_tools %}\n"
    "            {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' -}}\n"
    "            {{- \"<|python_tag|>\" + tool_call.name + \".call(\" }}\n"
    "            {%- for arg_name, arg_val in tool_call.arguments | items %}\n"
    "                {{- arg_name + '=\"' + arg_val + '\"' }}\n"
    "                {%- if not loop.last %}\n"
    "                    {{- \", \" }}\n"
    "                {%- endif %}\n"
    "                {%- endfor %}\n"
    "            {{- \")\" }}\n"
    "        {%- else  %}\n"
    "            {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' -}}\n"
    "            {{- '{\"name\": \"' + tool_call.name + '\", ' }}\n"
    "            {{- '\"parameters\": ' }}\n"
    "            {{- tool_call.arguments | tojson }}\n"
    "            {{- \"}\" }}\n"
    "        {%- endif %}\n"
    "        {%- if builtin_tools is defined %}\n"
    "            {#- This means we're in ipython mode #}\n"
    "            {{- \"<|eom_id|>\" }}\n"
    "        {%- else %}\n"
    "            {{- \"<|eot_id|>\" }}\n"
    "        {%- endif %}\n"
    "    {%- elif message.role == \"tool\" or message.role == \"ipython\" %}\n"
    "        {{- \"<|start_header_id|>ipython<|end_header_id|>\\n\\n\" }}\n"
    "        {%- if message.content is mapping or message.content is iterable %}\n"
    "            {{- message.content | tojson }}\n"
    "        {%- else %}\n"
    "            {{- message.content }}\n"
    "        {%- endif %}\n"
    "        {{- \"<|eot_id|>\" }}\n"
    "    {%- endif %}\n"
    "{%- endfor %}\n"
    "{%- if add_generation_prompt %}\n"
    "    {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}\n"
    "{%- endif %}\n"
)

LLAMA32 = (
    "{{- bos_token }}\n"
    "{%- if custom_tools is defined %}\n"
    "    {%- set tools = custom_tools %}\n"
    "{%- endif %}\n"
    "{%- if not tools_in_user_message is defined %}\n"
    "    {%- set tools_in_user_message = true %}\n"
    "{%- endif %}\n"
    "{%- if not date_string is defined %}\n"
    "    {%- if strftime_now is defined %}\n"
    "        {%- set date_string = strftime_now(\"%d %b %Y\") %}\n"
    "    {%- else %}\n"
    "        {%- set date_string = \"26 Jul 2024\" %}\n"
    "    {%- endif %}\n"
    "{%- endif %}\n"
    "{%- if not tools is defined %}\n"
    "    {%- set tools = none %}\n"
    "{%- endif %}\n"
    "\n"
    "{#- This block extracts the system message, so we can slot it into the right place. #}\n"
    "{%- if messages[0]['role'] == 'system' %}\n"
    "    {%- set system_message = messages[0]['content']|trim %}\n"
    "    {%- set messages = messages[1:] %}\n"
    "{%- else %}\n"
    "    {%- set system_message = \"\" %}\n"
    "{%- endif %}\n"
    "\n"
    "{#- System message #}\n"
    "{{- \"<|start_header_id|>system<|end_header_id|>\\n\\n\" }}\n"
    "{%- if tools is not none %}\n"
    "    {{- \"Environment: ipython\\n\" }}\n"
    "{%- endif %}\n"
    "{{- \"Cutting Knowledge Date: December 2023\\n\" }}\n"
    "{{- \"Today Date: \" + date_string + \"\\n\\n\" }}\n"
    "{%- if tools is not none and not tools_in_user_message %}\n"
    "    {{- \"You have access to the following functions. To call a function, please respond with JSON for a function call.\" }}\n"
    "    {{- 'Respond in the format {\"name\": function name, \"parameters\": dictionary of argument name and its value}.' }}\n"
    "    {{- \"Do not use variables.\\n\\n\" }}\n"
    "    {%- for t in tools %}\n"
    "        {{- t | tojson(indent=4) }}\n"
    "        {{- \"\\n\\n\" }}\n"
    "    {%- endfor %}\n"
    "{%- endif %}\n"
    "{{- system_message }}\n"
    "{{- \"<|eot_id|>\" }}\n"
    "\n"
    "{#- Custom tools are passed in a user message with some extra guidance #}\n"
    "{%- if tools_in_user_message and not tools is none %}\n"
    "    {#- Extract the first user message so we can plug it in here #}\n"
    "    {%- if messages | length != 0 %}\n"
    "        {%- set first_user_message = messages[0]['content']|trim %}\n"
    "        {%- set messages = messages[1:] %}\n"
    "    {%- else %}\n"
    "        {{- raise_exception(\"Cannot put tools in the first user message when there's no first user message!\") }}\n"
    "{%- endif %}\n"
    "    {{- '<|start_header_id|>user<|end_header_id|>\\n\\n' -}}\n"
    "    {{- \"Given the following functions, please respond with a JSON for a function call \" }}\n"
    "    {{- \"with its proper arguments that best answers the given prompt.\\n\\n\" }}\n"
    "    {{- 'Respond in the format {\"name\": function name, \"parameters\": dictionary of argument name and its value}.' }}\n"
    "    {{- \"Do not use variables.\\n\\n\" }}\n"
    "    {%- for t in tools %}\n"
    "        {{- t | tojson(indent=4) }}\n"
    "        {{- \"\\n\\n\" }}\n"
    "    {%- endfor %}\n"
    "    {{- first_user_message + \"<|eot_id|>\"}}\n"
    "{%- endif %}\n"
    "\n"
    "{%- for message in messages %}\n"
    "    {%- if not (message.role == 'ipython' or message.role == 'tool' or 'tool_calls' in message) %}\n"
    "        {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'+ message['content'] | trim + '<|eot_id|>' }}\n"
    "    {%- elif 'tool_calls' in message %}\n"
    "        {%- if not message.tool_calls|length == 1 %}\n"
    "            {{- raise_exception(\"This model only supports single tool-calls at once!\") }}\n"
    "        {%- endif %}\n"
    "        {%- set tool_call = message.tool_calls[0].function %}\n"
    "        {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' -}}\n"
    "        {{- '{\"name\": \"' + tool_call.name + '\", ' }}\n"
    "        {{- '\"parameters\": ' }}\n"
    "        {{- tool_call.arguments | tojson }}\n"
    "        {{- \"}\" }}\n"
    "        {{- \"<|eot_id|>\" }}\n"
    "    {%- elif message.role == \"tool\" or message.role == \"ipython\" %}\n"
    "        {{- \"<|start_header_id|>ipython<|end_header_id|>\\n\\n\" }}\n"
    "        {%- if message.content is mapping or message.content is iterable %}\n"
    "            {{- message.content | tojson }}\n"
    "        {%- else %}\n"
    "            {{- message.content }}\n"
    "        {%- endif %}\n"
    "        {{- \"<|eot_id|>\" }}\n"
    "    {%- endif %}\n"
    "{%- endfor %}\n"
    "{%- if add_generation_prompt %}\n"
    "    {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}\n"
    "{%- endif %}\n"
)

GEMMA2 = "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}{% if (message['role'] == 'assistant') %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}{% endif %}{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}{% endfor %}{% if add_generation_prompt %}{{'<start_of_turn>model\n'}}{% endif %}"

GEMMA3 = (
    "{{ bos_token }}\n"
    "{%- if messages[0]['role'] == 'system' -%}\n"
    "    {%- if messages[0]['content'] is string -%}\n"
    "        {%- set first_user_prefix = messages[0]['content'] + '\n"
    "\n"
    "' -%}\n"
    "    {%- else -%}\n"
    "        {%- set first_user_prefix = messages[0]['content'][0]['text'] + '\n"
    "\n"
    "' -%}\n"
    "    {%- endif -%}\n"
    "    {%- set loop_messages = messages[1:] -%}\n"
    "{%- else -%}\n"
    "    {%- set first_user_prefix = \"\" -%}\n"
    "    {%- set loop_messages = messages -%}\n"
    "{%- endif -%}\n"
    "{%- for message in loop_messages -%}\n"
    "    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}\n"
    "        {{ raise_exception(\"Conversation roles must alternate user/assistant/user/assistant/...\") }}\n"
    "    {%- endif -%}\n"
    "    {%- if (message['role'] == 'assistant') -%}\n"
    "        {%- set role = \"model\" -%}\n"
    "    {%- else -%}\n"
    "        {%- set role = message['role'] -%}\n"
    "    {%- endif -%}\n"
    "    {{ '<start_of_turn>' + role + '\n"
    "' + (first_user_prefix if loop.first else \"\") }}\n"
    "    {%- if message['content'] is string -%}\n"
    "        {{ message['content'] | trim }}\n"
    "    {%- elif message['content'] is iterable -%}\n"
    "        {%- for item in message['content'] -%}\n"
    "            {%- if item['type'] == 'image' -%}\n"
    "                {{ '<start_of_image>' }}\n"
    "            {%- elif item['type'] == 'text' -%}\n"
    "                {{ item['text'] | trim }}\n"
    "            {%- endif -%}\n"
    "        {%- endfor -%}\n"
    "    {%- else -%}\n"
    "        {{ raise_exception(\"Invalid content type\") }}\n"
    "    {%- endif -%}\n"
    "    {{ '<end_of_turn>\n"
    "' }}\n"
    "{%- endfor -%}\n"
    "{%- if add_generation_prompt -%}\n"
    "    {{'<start_of_turn>model\n"
    "'}}\n"
    "{%- endif -%}\n"
)

# DeepSeek-R1-Distill-Qwen-7B's, published on one line, cut here at its
# tags (llama.cpp's models/templates keeps it, reformatted, for Qwen-32B
# and Llama-8B).  It replaced the distills' first revision, which GGUFs
# made before still carry and which differs only in the generation prompt:
# "<｜Assistant｜>" without "<think>\n" (DEEPSEEK_R1_FIRST).
DEEPSEEK_R1 = (
    "{% if not add_generation_prompt is defined %}{% set add_generation_prompt = false %}{% endif %}"
    "{% set ns = namespace(is_first=false, is_tool=false, is_output_first=true, system_prompt='') %}"
    "{%- for message in messages %}{%- if message['role'] == 'system' %}"
    "{% set ns.system_prompt = message['content'] %}{%- endif %}{%- endfor %}"
    "{{bos_token}}{{ns.system_prompt}}"
    "{%- for message in messages %}"
    "{%- if message['role'] == 'user' %}{%- set ns.is_tool = false -%}"
    "{{'<｜User｜>' + message['content']}}{%- endif %}"
    "{%- if message['role'] == 'assistant' and message['content'] is none %}{%- set ns.is_tool = false -%}"
    "{%- for tool in message['tool_calls']%}"
    "{%- if not ns.is_first %}"
    "{{'<｜Assistant｜><｜tool▁calls▁begin｜><｜tool▁call▁begin｜>' + tool['type'] + '<｜tool▁sep｜>' + tool['function']['name'] + '\\n' + '```json' + '\\n' + tool['function']['arguments'] + '\\n' + '```' + '<｜tool▁call▁end｜>'}}"
    "{%- set ns.is_first = true -%}"
    "{%- else %}"
    "{{'\\n' + '<｜tool▁call▁begin｜>' + tool['type'] + '<｜tool▁sep｜>' + tool['function']['name'] + '\\n' + '```json' + '\\n' + tool['function']['arguments'] + '\\n' + '```' + '<｜tool▁call▁end｜>'}}"
    "{{'<｜tool▁calls▁end｜><｜end▁of▁sentence｜>'}}"
    "{%- endif %}{%- endfor %}{%- endif %}"
    "{%- if message['role'] == 'assistant' and message['content'] is not none %}"
    "{%- if ns.is_tool %}{{'<｜tool▁outputs▁end｜>' + message['content'] + '<｜end▁of▁sentence｜>'}}"
    "{%- set ns.is_tool = false -%}"
    "{%- else %}{% set content = message['content'] %}"
    "{% if '</think>' in content %}{% set content = content.split('</think>')[-1] %}{% endif %}"
    "{{'<｜Assistant｜>' + content + '<｜end▁of▁sentence｜>'}}{%- endif %}{%- endif %}"
    "{%- if message['role'] == 'tool' %}{%- set ns.is_tool = true -%}"
    "{%- if ns.is_output_first %}"
    "{{'<｜tool▁outputs▁begin｜><｜tool▁output▁begin｜>' + message['content'] + '<｜tool▁output▁end｜>'}}"
    "{%- set ns.is_output_first = false %}"
    "{%- else %}{{'\\n<｜tool▁output▁begin｜>' + message['content'] + '<｜tool▁output▁end｜>'}}"
    "{%- endif %}{%- endif %}"
    "{%- endfor -%}"
    "{% if ns.is_tool %}{{'<｜tool▁outputs▁end｜>'}}{% endif %}"
    "{% if add_generation_prompt and not ns.is_tool %}{{'<｜Assistant｜><think>\\n'}}{% endif %}"
)
DEEPSEEK_R1_FIRST = DEEPSEEK_R1.replace("<｜Assistant｜><think>\\n'}}", "<｜Assistant｜>'}}")
assert DEEPSEEK_R1_FIRST != DEEPSEEK_R1

TEMPLATES = {
    "chatml": ("", "<|im_end|>",
               "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"),
    "qwen2": ("", "<|im_end|>",
              "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"),
    "llama3": ("<|begin_of_text|>", "<|eot_id|>",
               "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"),
    "llama2": ("<s>", "</s>",
               "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}{% set system_message = messages[0]['content'] %}{% else %}{% set loop_messages = messages %}{% set system_message = false %}{% endif %}{% for message in loop_messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}{% if loop.index0 == 0 and system_message != false %}{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}{% else %}{% set content = message['content'] %}{% endif %}{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}{% elif message['role'] == 'assistant' %}{{ ' '  + content.strip() + ' ' + eos_token }}{% endif %}{% endfor %}"),
    "mistral": ("<s>", "</s>",
                "{%- if messages[0]['role'] == 'system' %}\n    {%- set system_message = messages[0]['content'] %}\n    {%- set loop_messages = messages[1:] %}\n{%- else %}\n    {%- set loop_messages = messages %}\n{%- endif %}\n\n{{- bos_token }}\n{%- for message in loop_messages %}\n    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}\n        {{- raise_exception('After the optional system message, conversation roles must alternate user/assistant/user/assistant/...') }}\n    {%- endif %}\n    {%- if message['role'] == 'user' %}\n        {%- if loop.first and system_message is defined %}\n            {{- ' [INST] ' + system_message + '\\n\\n' + message['content'] + ' [/INST]' }}\n        {%- else %}\n            {{- ' [INST] ' + message['content'] + ' [/INST]' }}\n        {%- endif %}\n    {%- elif message['role'] == 'assistant' %}\n        {{- ' ' + message['content'] + eos_token}}\n    {%- else %}\n        {{- raise_exception('Only user and assistant roles are supported, with the exception of an initial optional system message!') }}\n    {%- endif %}\n{%- endfor %}\n"),
    "zephyr": ("<s>", "</s>",
               "{% for message in messages %}\n{% if message['role'] == 'user' %}\n{{ '<|user|>\n' + message['content'] + eos_token }}\n{% elif message['role'] == 'system' %}\n{{ '<|system|>\n' + message['content'] + eos_token }}\n{% elif message['role'] == 'assistant' %}\n{{ '<|assistant|>\n'  + message['content'] + eos_token }}\n{% endif %}\n{% if loop.last and add_generation_prompt %}\n{{ '<|assistant|>' }}\n{% endif %}\n{% endfor %}"),
    "phi3": ("<s>", "<|endoftext|>",
             "{% for message in messages %}{% if message['role'] == 'system' %}{{'<|system|>\n' + message['content'] + '<|end|>\n'}}{% elif message['role'] == 'user' %}{{'<|user|>\n' + message['content'] + '<|end|>\n'}}{% elif message['role'] == 'assistant' %}{{'<|assistant|>\n' + message['content'] + '<|end|>\n'}}{% endif %}{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% else %}{{ eos_token }}{% endif %}"),
    "phi3.5": ("<s>", "<|endoftext|>",
               "{% for message in messages %}{% if message['role'] == 'system' and message['content'] %}{{'<|system|>\n' + message['content'] + '<|end|>\n'}}{% elif message['role'] == 'user' %}{{'<|user|>\n' + message['content'] + '<|end|>\n'}}{% elif message['role'] == 'assistant' %}{{'<|assistant|>\n' + message['content'] + '<|end|>\n'}}{% endif %}{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% else %}{{ eos_token }}{% endif %}"),
    "llama3.1": ("<|begin_of_text|>", "<|eot_id|>", LLAMA31),
    "llama3.2": ("<|begin_of_text|>", "<|eot_id|>", LLAMA32),
    "gemma2": ("<bos>", "<eos>", GEMMA2),
    "gemma3": ("<bos>", "<eos>", GEMMA3),
    "deepseek-r1": ("<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", DEEPSEEK_R1),
    "deepseek-r1-first": ("<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", DEEPSEEK_R1_FIRST),
}

CONVERSATIONS = [
    [("user", "Hello!")],
    [("system", "You are terse."), ("user", "What is 2+2?")],
    [("user", "Hi"), ("assistant", "Hello! How can I help?"), ("user", "Tell me a joke.")],
    [("system", "Be kind."), ("user", "  padded question  "), ("assistant", "An answer.\n"),
     ("user", "Caf\u00e9 \U0001f600\nsecond line")],
    [("developer", "Answer in French."), ("user", "Good morning")],
    [("system", ""), ("user", "Empty system message")],
]

# Conversations for some templates only: the roles and orders they take
# or refuse in their own way (chat.c refuses Llama 2's tool turns, which
# its template drops, so these are not for every template).
LLAMA31_CONVERSATIONS = [
    [("system", "  Padded system.\n"), ("user", "Hi")],
    [("system", "Only a system message.")],
    [("user", "   ")],
    [("user", "Hi"), ("system", " A later system message "), ("user", "Again")],
    [("user", "What is 2+2?"), ("assistant", "Let me look."),
     ("tool", '{"result": 4, "note": "a\\b\t\x01 caf\u00e9 \U0001f600 <b>&</b>"}\n'),
     ("assistant", "4.")],
    [("user", "x"), ("ipython", "  line1\nline2\r\x7f\x1f\x0b\x0c\x08 \u2028 '  ")],
]
GEMMA_CONVERSATIONS = [
    [("system", "  Padded system\n"), ("user", "  Hi  ")],
    [("system", "Only a system message.")],
    [("user", "Hi"), ("tool", "42"), ("user", "Thanks")],
    [("user", "Hi"), ("system", "  A later system message  ")],
    [("user", "a"), ("user", "b")],
    [("assistant", "I start.")],
    [("user", "Hi"), ("assistant", "Hello"), ("assistant", "Again")],
    [("system", "Be brief."), ("assistant", "Hi")],
]
DEEPSEEK_CONVERSATIONS = [
    [("user", "2+2?"), ("assistant", "<think>\nAdd them.\n</think>\n\n4."), ("user", "And 3+3?")],
    [("user", "x"), ("assistant", "a</think>b</think>\n\nc"), ("user", "y"),
     ("assistant", "<think>never closed"), ("assistant", "</think>")],
    [("system", "First."), ("user", "Hi"), ("developer", "Second, later."), ("user", "Again")],
    [("system", "Only a system message.")],
    [("assistant", "I start.")],
    [("user", "Hi"), ("ipython", "dropped"), ("other", "dropped too"), ("assistant", "Hello")],
    [("user", "2+2?"), ("assistant", "Let me look."), ("tool", "4"), ("tool", "four"),
     ("assistant", "<think>x</think>It is 4."), ("user", "And 5?"), ("tool", "5"),
     ("user", "Thanks"), ("tool", "last")],
    [("user", "Hi"), ("tool", "4"), ("system", "  Sys  "), ("assistant", "ok")],
    [("user", "\uff5cUser\uff5c <\uff5cUser\uff5c> caf\u00e9 \U0001f600\n  ")],
]
EXTRA_CONVERSATIONS = {"llama3.1": LLAMA31_CONVERSATIONS, "llama3.2": LLAMA31_CONVERSATIONS,
                       "gemma2": GEMMA_CONVERSATIONS, "gemma3": GEMMA_CONVERSATIONS,
                       "deepseek-r1": DEEPSEEK_CONVERSATIONS,
                       "deepseek-r1-first": DEEPSEEK_CONVERSATIONS}

# The time strftime_now formats (transformers': datetime.now()).
FIXED_NOW = datetime.datetime(2025, 3, 9, 12, 0, 0)


def render(template, bos, eos, msgs, add_gen):
    """The environment of transformers' _compile_jinja_template and the
    arguments of its apply_chat_template without tools."""
    import json

    import jinja2.ext
    from jinja2.exceptions import TemplateError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(m):
        raise TemplateError(m)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                          sort_keys=sort_keys)
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = FIXED_NOW.strftime
    # developer is the new name of system: the templates predate it
    messages = [{"role": "system" if r == "developer" else r, "content": c} for r, c in msgs]
    return env.from_string(template).render(messages=messages, tools=None, documents=None,
                                            bos_token=bos, eos_token=eos,
                                            add_generation_prompt=add_gen)


def chat_rows(smollm_template):
    from jinja2.exceptions import TemplateError
    templates = dict(TEMPLATES)
    if smollm_template:
        templates["smollm2"] = ("<|im_start|>", "<|im_end|>", smollm_template)
    rows = []
    for name, (bos, eos, tmpl) in templates.items():
        rows.append(["T", name, bos, eos, tmpl])
        for msgs in CONVERSATIONS + EXTRA_CONVERSATIONS.get(name, []):
            for add_gen in (True, False):
                try:
                    row = ["C", name, "1" if add_gen else "0", render(tmpl, bos, eos, msgs, add_gen)]
                except TemplateError as e:     # the template refuses (roles, order)
                    row = ["E", name, "1" if add_gen else "0", str(e)]
                for r, c in msgs:
                    row += [r, c]
                rows.append(row)
    return rows


def write(name, lines):
    os.makedirs(OUT, exist_ok=True)
    with open(os.path.join(OUT, name), "w", encoding="utf-8", newline="\n") as f:
        f.write("# generated by tools/tokref.py; do not edit\n")
        for ln in lines:
            f.write(ln + "\n")
    print("wrote %s (%d lines)" % (os.path.join(OUT, name), len(lines)))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--smollm", default=os.path.join(ROOT, ".cache", "models",
                                                     "SmolLM2-135M-Instruct.Q4_1.gguf"))
    ap.add_argument("--stories", default=os.path.join(ROOT, "models", "stories260K.gguf"))
    ap.add_argument("--chat-only", action="store_true", help="write chat.tsv alone")
    a = ap.parse_args()

    fmt = lambda rows: ["%s\t%s\t%s" % (f, esc(s), " ".join(map(str, ids))) for f, s, ids in rows]
    if not a.chat_only:
        write("smollm2.tsv", fmt(smollm_refs(a.smollm)))
        write("stories260k.tsv", fmt(llama_refs(a.stories)))
        write("pretok.tsv", fmt(pretok_rows()))
    tmpl = GGUFReader(a.smollm).fields.get("tokenizer.chat_template")
    write("chat.tsv", ["\t".join(r[:1] + [esc(x) for x in r[1:]])
                       for r in chat_rows(tmpl.contents() if tmpl else None)])


if __name__ == "__main__":
    main()
