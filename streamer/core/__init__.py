"""The engine's decisions, sans IO: broadcasts, arbitration, playheads, preemption and resume,
the plan of which programme each zone hears. See `streamer.core.engine.Core`."""
