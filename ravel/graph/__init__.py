"""`ravel graph`: an app or a blueprint's plan as a picture (SVG via Graphviz, DOT, Mermaid, JSON).

model.py is the pure graph (hosts, networks, VMs with their NICs, exposed services and, for a
running app, each VM's state and readiness) built from an AppPlan or from an app's records;
dot.py and mermaid.py turn it into text (pure, golden-tested); svg.py runs Graphviz's `dot`;
source.py finds what FILE|APP names and builds the graph from it (the only part that reads
files and the state). `ravel ui` (ravel/ui) draws the same graph, live.
"""
