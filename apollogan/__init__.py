"""apollogan: music as images. MIDI -> binary piano rolls -> GANs -> MIDI."""

__version__ = "0.1.0"
