"""Offline demo data: hand-written pharmacology facts and the generators that turn them into training text.

The tiny demo models shipped with the app are trained only on text produced here (never on a third-party corpus),
so every sentence, label and entity span is true and exact by construction.
"""
