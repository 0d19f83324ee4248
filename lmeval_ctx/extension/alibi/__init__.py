"""ALiBi methods on a built BLOOM, MPT or Falcon-ALiBi model: the slopes installed in place of
transformers' own, and the exact ALiBi attention in memory linear in the length.
"""
