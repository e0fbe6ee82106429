#!/usr/bin/env bash
# Sourced by run_tests.sh and the demos: create .venv with requirements.txt once, then activate it.
if [ ! -x .venv/bin/python ] || [ requirements.txt -nt .venv/.installed ]; then
    echo "setting up .venv from requirements.txt (first run: a few minutes)" >&2
    python3 -m venv .venv
    .venv/bin/python -m pip install -q --upgrade pip
    .venv/bin/python -m pip install -q -r requirements.txt
    touch .venv/.installed
fi
source .venv/bin/activate
