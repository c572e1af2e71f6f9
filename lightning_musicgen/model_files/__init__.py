"""Every read and write of model files: model folders, training-checkpoint references, legacy files.

Modules (this package depends on the models, never the reverse; nothing is re-exported here):
    files         the format: names, versions, hashes, references, config/weights reading, what a path holds
    codec         codec folders, CodecModule checkpoints, the single-file codec of earlier versions
    text_encoder  whether a folder copies its text encoder, what it needs from outside itself
    write         LM + conditioner (+ codec) -> a MusicGen model folder
    read          MusicGen folders, MusicGenModule checkpoints, earlier converted files -> models
    export        any checkpoint or folder -> our model folder (`export` without --format)
    adapters      LoRA adapters files and the `lora` verb (extract, merge)


Model folder (written by `export`, `convert`, `model_files.codec.save_codec`; loads with no pickled code):

    MusicGen                                       codec
    DIR/config.json       typed + versioned        DIR/config.json   {"format", "version", "kind": "codec",
    DIR/model.safetensors "lm.*" + "conditioner.*"                    "codec": CodecConfig, "n_q",
                          (never the text                             "weights": "ema" | "trained"}
                          encoder's weights)       DIR/model.safetensors   CompressionModel.state_dict()
    DIR/codec/            a codec folder
    DIR/text_encoder/     tokenizer files + the encoder's transformers config.json
                          (+ its model.safetensors when copied in)

MusicGen config.json: {"format": "lightning_musicgen", "version": 1, "kind": "musicgen",
"lm": LMConfig, "conditioner": ConditionerConfig, "weights": "ema" | "trained",
"text_encoder": {"name", "sha256" (of its weights), "copied"}, "max_duration", "meta"}.
The text encoder's weights are copied in ("auto", the default of `save_musicgen` and `export`) when
the source carried them (a converted or copied model, a trained encoder) or when its name is not one
that ships with an installed package (everything but "minilm"); "copy" always copies, "refer" keeps
only the name (a trained encoder is copied regardless). One that is not copied is loaded by name
(e.g. "minilm", "t5-base" or a folder) and must hash to the recorded sha256; `outside_references`
names what a folder needs from outside itself, and loading such a folder logs it in one line.

Training checkpoints (Lightning `.ckpt`, resume only): configs live once, in `hyper_parameters`;
frozen parts are not embedded but referenced under `checkpoint["frozen"]`:
    {"codec": {"path": relative to the checkpoint's folder, "absolute": str, "sha256": str},
     "text_encoder": {"name": str, "sha256": str}}
A reference resolves against the checkpoint's own folder first, then its absolute path, and must
match its content hash; otherwise one line names the file and the expected hash. A fine-tuning
checkpoint also has `hyper_parameters["init_from"]` (its frozen text encoder is read from there when
the recorded name alone does not resolve it) and `hyper_parameters["lora"]` (the LM's state then
holds base weights + adapters; it loads, and exports, with the adapters merged).

LoRA adapters file (`lora extract`, `MusicGenModule.save_adapters`): one safetensors file of adapter tensors
("lm.*", "conditioner.*"), metadata {"format": "lightning_musicgen.lora", "lora": settings, "meta"}.

Also read: the single-file torch format of earlier versions ({"format": "lightning_musicgen.codec"
| "lightning_musicgen.musicgen", ...}) and CodecModule / MusicGenModule checkpoints.
"""
