"""Warp renderer: motion coefficients -> frames (engine.render.renderer.Renderer, to_uint8).

warp.py builds the flow basis once per avatar, mesh.py refines the rig's mesh around the
lids, lips.py measures the portrait's lips once (the mouth's palette, a clean closed lip line
at rest), mouth.py and eyes.py composite the mouth interior and the eyelids, ops.py holds the
small tensor helpers they share.
"""
