"""`sft export`: a run's model where users run models (an HF folder, a GGUF file, an Ollama Modelfile), carrying
the prompt format and stop tokens it was trained with, and checked to answer as `sft generate` does."""
