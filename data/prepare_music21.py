"""Prepare the music21 ABC corpus into data/music21_abc/ (run_finetune.py does this by itself when needed).

    python data/prepare_music21.py
"""

import json

from finetune.data import BUILTIN_DIR, prepare_music21

if __name__ == "__main__":
    print(json.dumps(prepare_music21(), indent=2))
    print(f"written to {BUILTIN_DIR}")
