"""DPO training (LoRA with TRL and PEFT). Used by the ``train_dpo`` node."""
