"""The engine past one machine: the generator stage as a Ray Serve deployment (deployment.py), avatar
packs by hash (packs.py), the front-end's remote stage and factory (client.py), sizing (config.py), and
`python -m streamer.cluster start|show|stop` (__main__.py). docs/scaling.md. Needs ray[serve] (the
[cluster] extra); nothing here imports ray until a cluster is used."""
