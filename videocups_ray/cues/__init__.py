"""cues"""
