"""Several nodes through Redis: key names (`keys`), the node registry and receiver directory
(`nodes`), leases with fencing tokens (`lease`), commands through Redis Streams (`commands`),
and the media path origin → edge over UDP (`envelope`, `feed`, `edge`), which never touches
Redis. Nothing here is imported when no Redis is configured."""
