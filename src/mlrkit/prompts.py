"""Every prompt template that turns a class name into text, in one place. A template holds one
``{}`` for the name; a label's embedding is the mean of its templates' unit embeddings."""

#: One prompt for a CLIP text tower (label embeddings, SigRL): open_clip's and SigRL's own.
CLIP_PROMPT = ("a photo of a {}.",)

#: CLIP's zero-shot ensemble: 7 of the 80 ImageNet templates of Radford et al. 2021, "Learning
#: Transferable Visual Models From Natural Language Supervision", the subset the released
#: notebook (``Prompt_Engineering_for_ImageNet.ipynb``) selects for prompt ensembling.
CLIP_ENSEMBLE = (
    "itap of a {}.",
    "a bad photo of the {}.",
    "a origami {}.",
    "a photo of the large {}.",
    "a {} in a video game.",
    "art of the {}.",
    "a photo of the small {}.",
)

#: The templates ConSE embeds labels and ImageNet names with, per label-embedding source, when
#: none are given (MiniLM: one prompt without a full stop; GloVe: the bare words; CLIP: its own
#: default, :data:`CLIP_PROMPT`).
CONSE_TEMPLATES: dict[str, tuple[str, ...] | None] = {
    "minilm": ("a photo of a {}",),
    "glove": None,
    "clip": None,
}
