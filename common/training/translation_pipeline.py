"""A `translation` pipeline for encoder-decoder models, saved beside each fine-tuned translation model.

transformers 5 dropped its built-in "translation" pipeline, so the translation recipe registers this one in
the saved config (`custom_pipelines`) and copies this file into the output dir, the way
`Pipeline.save_pretrained` shares a custom pipeline. Then either of these loads the model:

    pipeline("translation", model=output_dir, trust_remote_code=True)   # runs this file from output_dir
    pipeline("translation", model=output_dir, pipeline_class=TranslationPipeline)   # this class, imported

Calls return `[{"translation_text": ...}]` per input, as the transformers 4 pipeline did. The source prefix
(T5) and the language codes (mBART-50, M2M100, NLLB) come from `config.task_specific_params["translation"]`,
written by the recipe; the forced first target token comes from the model's generation config.

This file is copied on its own into model directories, so it imports nothing but transformers.
"""

from __future__ import annotations

from transformers import Pipeline

TASK = "translation"


class TranslationPipeline(Pipeline):
    _pipeline_calls_generate = True
    _load_processor = False
    _load_image_processor = False
    _load_feature_extractor = False
    _load_tokenizer = True

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        settings = (getattr(self.model.config, "task_specific_params", None) or {}).get(TASK, {})
        self.source_prefix = settings.get("prefix") or ""
        # Multilingual tokenizers mark the source language with a special token.
        if settings.get("src_lang") and hasattr(self.tokenizer, "src_lang"):
            self.tokenizer.src_lang = settings["src_lang"]
            self.tokenizer.tgt_lang = settings.get("tgt_lang")

    def _sanitize_parameters(self, truncation=None, max_source_length=None, **generate_kwargs):
        # Everything but `truncation` and `max_source_length` (where sources are cut, in tokens; default: the
        # tokenizer's maximum) is a generation parameter (max_length, num_beams, ...) for this call.
        preprocess = {"truncation": truncation, "max_source_length": max_source_length}
        return {k: v for k, v in preprocess.items() if v is not None}, generate_kwargs, {}

    def __call__(self, texts: str | list[str], **kwargs) -> list[dict[str, str]]:
        result = super().__call__(texts, **kwargs)
        # One input gives one dict inside a list, as in transformers 4.
        return [result] if isinstance(texts, str) else result

    def preprocess(self, text: str, truncation: bool = True, max_source_length: int | None = None):
        return self.tokenizer(self.source_prefix + text, truncation=truncation, max_length=max_source_length,
                              return_tensors="pt")

    def _forward(self, model_inputs, **generate_kwargs):
        generate_kwargs = self._prepare_generate_kwargs(generate_kwargs)
        return {"output_ids": self.model.generate(**model_inputs, **generate_kwargs)}

    def postprocess(self, model_outputs) -> dict[str, str]:
        ids = model_outputs["output_ids"][0]
        return {"translation_text": self.tokenizer.decode(ids, skip_special_tokens=True).strip()}
