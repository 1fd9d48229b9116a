"""Running a model: preprocessing (``preprocess``), the sliding window (``sliding_window``), the :class:`Segmenter`
(``segmenter``), many cases (``batch``), per-organ statistics (``statistics``) and the interactive click session
(``session``)."""
