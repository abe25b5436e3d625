from ollama_gate.entrypoints.cli import main

raise SystemExit(main())
