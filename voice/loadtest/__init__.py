"""`anruf loadtest`: synthetic calls through the real server and relay, measured.

- signature.py: a tone pair per call and direction, pre-encoded Opus packet loops, detection
- speech.py: a generated speech-like test signal (for PESQ)
- measure.py: per-direction loss, jitter, one-way delay; E-model R and MOS; PESQ
- line.py: a caller and a callee device carrying calls one after another (`Line.run_call`)
- runner.py, report.py, plots.py: placing calls at a rate, the report and its plots
"""
