"""Model building blocks, one file each: eva_vit (image encoder), qformer, language (frozen LLMs), blip2."""
