"""Chat templates: recognise the ChatML family of Jinja templates and render them in Python.

A GGUF file carries its chat template as Jinja source (``tokenizer.chat_template``), meant for a
Jinja engine. minitx has none: it recognises the template as one of the ChatML forms (OpenAI's
Chat Markup Language, used by SmolLM2, Qwen and others), with or without a default system
prompt, and reproduces what Jinja would print::

    <|im_start|>system\n{default system prompt}<|im_end|>\n   (only if the first message is
                                                              not from "system")
    <|im_start|>{role}\n{content}<|im_end|>\n                 (every message)
    <|im_start|>assistant\n                                    (add_generation_prompt)

Whitespace is handled as transformers' chat environment does it (``trim_blocks``,
``lstrip_blocks``, ``-`` trim markers). Any other template is refused with a clear error rather
than rendered wrongly. tests/test_bpe.py checks the output against transformers'
``apply_chat_template`` on stored conversations.
"""
import functools
import re


@functools.lru_cache(maxsize=1)
def _template_regex():
    """The ChatML template family as a regex over Jinja source, default system prompt optional.

    Written as the template reads; then a space means optional whitespace inside a tag, ``'``
    either quote, and ``\\n`` inside a string literal a real newline or the escape ``\\n``.
    It matches the template after ``_jinja_whitespace``: no text may stand between the tags.
    """
    q, nl = "['\"]", r"(?:\n|\\n)"

    def sketch(s):
        out = re.escape(s).replace(r"\ ", r"\s*").replace("'", q).replace("NL", nl)
        return out.replace(r"\{%", r"\{%\s*").replace(r"\{\{", r"\{\{\s*")

    system = (sketch("{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system"
                     "NL") + r"(?P<system>(?:[^'\"\\]|\\.)*)" + sketch("<|im_end|>NL' }}{% endif %}"))
    turn = sketch("{{ '<|im_start|>' + message['role'] + 'NL' + message['content'] + "
                  "'<|im_end|>' + 'NL' }}")
    return re.compile(sketch("{% for message in messages %}") + f"(?:{system})?" + turn
                      + sketch("{% endfor %}{% if add_generation_prompt %}"
                               "{{ '<|im_start|>assistant" + "NL' }}{% endif %}") + r"\n?\Z")


def _jinja_whitespace(template):
    """Apply Jinja's whitespace control as transformers' chat environment sets it up.

    ``{%-``/``{{-`` and ``-%}``/``-}}`` eat the whitespace before/after the tag; ``trim_blocks``
    drops the first newline after a ``%}``; ``lstrip_blocks`` drops spaces and tabs between a line
    start and a ``{%``. What remains between two tags is text the template prints.
    """
    t = re.sub(r"\s*(\{[%{])-", r"\1", template)
    t = re.sub(r"-([%}]\})\s*", r"\1", t)
    t = re.sub(r"(^|\n)[ \t]+\{%", r"\1{%", t)       # lstrip_blocks, on the source's lines
    return re.sub(r"%\}\n", "%}", t)                    # then trim_blocks


def parse_chat_template(template):
    """Recognise a chat template: returns ("chatml", default_system_prompt or None).

    Raises:
        ValueError: the template is not one of the ChatML forms this module reproduces.
    """
    if not isinstance(template, str):
        raise TypeError(f"chat template must be str, got {type(template).__name__}")
    m = _template_regex().match(_jinja_whitespace(template))
    if m is None:
        head = template[:80].replace("\n", "\\n")
        raise ValueError(f"unrecognised chat template (only ChatML is supported): {head!r}...")
    system = m.group("system")
    if system is not None:   # undo Jinja string escapes: \n, \t, \\, \' and \"
        system = re.sub(r"\\(.)", lambda e: {"n": "\n", "t": "\t"}.get(e.group(1), e.group(1)),
                        system)
    return "chatml", system


def render_chat(messages, template, add_generation_prompt=True):
    """The text a ChatML template renders for ``messages``, without a Jinja engine.

    ``<|im_start|>{role}\\n{content}<|im_end|>\\n`` per message; when the template has a
    default system prompt and the first message is not from "system", that prompt comes first;
    ``<|im_start|>assistant\\n`` at the end when ``add_generation_prompt``. An empty list gives
    what Jinja gives, the generation prompt alone (transformers refuses an empty conversation).

    Args:
        messages: list of dicts with str "role" and "content".
        template: the Jinja template string (e.g. GGUF ``tokenizer.chat_template``).
        add_generation_prompt: end with the assistant's opening tag.
    Returns:
        str, to be encoded with special tokens allowed.
    """
    _, system = parse_chat_template(template)
    if not isinstance(messages, (list, tuple)):
        raise TypeError(f"messages must be a list of dicts, got {type(messages).__name__}")
    for k, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) \
                or not isinstance(m.get("content"), str):
            raise ValueError(f"message {k} must be a dict with str 'role' and 'content', got {m!r}")
    parts = []
    if system is not None and messages and messages[0]["role"] != "system":
        parts.append(f"<|im_start|>system\n{system}<|im_end|>\n")
    parts += [f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages]
    if add_generation_prompt:
        parts.append("<|im_start|>assistant\n")
    return "".join(parts)
