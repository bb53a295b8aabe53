"""Further outputs fed the same programme frames as the RTP output (DESIGN.md §3): HTTP/Ogg
listening (`listen`), the replay archive (`archive`), written by the Ogg/Opus pager (`ogg`)."""
