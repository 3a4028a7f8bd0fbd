"""Training-set edits guided by influence (Sec. 4.2-4.3): lexicon, search, datasets."""
