"""T5's sequence classifier: the encoder, its hidden states mean-pooled over the real tokens, a linear layer.

Why not transformers' T5ForSequenceClassification: it runs the decoder too (its input the text shifted right) and
classifies the decoder's state at the last EOS, so every text must hold the same number of `eos_token_id`s. The
bundle's T5 takes [SEP] as EOS (packed data has no </s>) and a pretrained decoder has only ever written span targets,
so that class would pay for a decoder that reads out-of-distribution inputs. The encoder is what span corruption and
DEPTH train to represent text, and what issue 29 asks to fine-tune; mean pooling needs no special token (EncT5 and
Sentence-T5 pool the encoder the same way).

A subclass of T5ForTokenClassification: the same modules and tensor names (`transformer` = T5EncoderModel,
`dropout`, `classifier`), so its initialisation, tied embeddings and save/load are transformers'; only forward
differs. transformers' Auto classes do not know it (AutoModelForSequenceClassification maps a T5 config to
T5ForSequenceClassification): the bundle loads its exports with this class (`ModelFamily.classifier_class`); outside
the bundle, `from ort_training.models.t5_classifier import T5EncoderForSequenceClassification` and `from_pretrained`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers import T5ForTokenClassification
from transformers.modeling_outputs import SequenceClassifierOutput


class T5EncoderForSequenceClassification(T5ForTokenClassification):
    def forward(self, input_ids=None, attention_mask=None, inputs_embeds=None, labels=None, return_dict=None, **kwargs):
        hidden = self.transformer(input_ids, attention_mask=attention_mask, inputs_embeds=inputs_embeds, return_dict=False)[0]
        if attention_mask is None:
            attention_mask = torch.ones(hidden.shape[:2], device=hidden.device)
        mask = attention_mask.to(hidden.dtype)[:, :, None]
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
        logits = self.classifier(self.dropout(pooled))
        loss = None
        if labels is not None:  # Hugging Face's problem types, as its *ForSequenceClassification compute them
            problem = self.config.problem_type or ("regression" if self.num_labels == 1 else "single_label_classification")
            if problem == "regression":
                loss = F.mse_loss(logits.squeeze(-1), labels.float().view(-1)) if self.num_labels == 1 else F.mse_loss(logits, labels.float())
            elif problem == "multi_label_classification":
                loss = F.binary_cross_entropy_with_logits(logits, labels.float())
            else:
                loss = F.cross_entropy(logits.view(-1, self.num_labels), labels.view(-1))
        return_dict = getattr(self.config, "return_dict", True) if return_dict is None else return_dict
        if not return_dict:
            return (logits,) if loss is None else (loss, logits)
        return SequenceClassifierOutput(loss=loss, logits=logits)
