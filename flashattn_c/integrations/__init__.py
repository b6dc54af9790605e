"""Backends that let other libraries run their attention on flashattn_c.

    import flashattn_c.integrations.transformers as fa_transformers
    name = fa_transformers.register()      # "fa_c"
    model.set_attn_implementation(name)

Each submodule imports its library only when it is used.
"""
