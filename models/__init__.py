"""The neural stages of EditX Studio: LLM, vocoder, speaker embedding and the clone pipeline."""
