"""The reference receiver: jitter buffer (`jitter`), decode and playout (`receiver`), audio
outputs (`output`) and the `loa receiver` command (`cli`). Shares only `streamer.rtp` packet and
Opus code (and the frame constants of `streamer.audio`) with the server."""
