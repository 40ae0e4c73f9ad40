"""Choose: resolutions from records, with held-out bounds (numpy only, no torch).

``policies`` holds the rules (select, cascade, random, oracle, headroom, the calibration
split); ``choices`` one function per command; ``compare``, ``frontier`` and ``crops`` the
tables across policies, models and crops."""
