"""SkyPilot task templates, shipped inside the package as `cascadia_sky.tasks` (through a symlink).

`stage-service.yaml` (one cascade stage: vLLM's OpenAI server; SkyServe service or one cluster per replica) and
`router-service.yaml` (the cascade's router). The renderer is `cascadia_sky.launch.tasks`; it fills the fields the
plan decides and leaves the rest as written here.
"""
