"""Text to speech: engines behind one small interface (a sentence in, 48 kHz mono PCM out,
streamed), a disk cache of rendered sentences, and the TTS Source the catalogue builds from a
`streamer.port.TtsAudio`.

    engines.py   TtsEngine protocol, EspeakEngine (offline, always there), TtsError
    cloud.py     HttpTtsEngine: FPT.AI, Viettel AI, Zalo AI, Vbee (one adapter, a shape each)
    cache.py     TtsCache: rendered sentences on disk by (text, engine, voice, rate), size-capped
    service.py   TtsService: the configured engines, input checks, the synthesis pool, rendering
    source.py    TtsSource: sentence by sentence ahead of playout, resumable at sentence starts
    procpool.py  SynthesisProcesses: synthesis in worker processes, warmed before serving
    priority.py  the CPU priority of synthesis workers and espeak-ng (below the server's)
    text.py      input checks (empty, too long, control characters, unreadable scripts) and the
                 bridge to the Vietnamese normaliser (streamer/tts/normalize.py)
"""
