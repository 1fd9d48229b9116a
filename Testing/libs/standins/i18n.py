"""Stand-in for ``slicer.i18n`` (Slicer's translation helpers), for the import smoke test only.

In Slicer, ``tr`` and ``translate`` look the text up in the application's Qt translator; here
they return the source text unchanged, which is what Slicer shows in English.
"""


def tr(text):
    return text


def translate(context, text):
    return text
