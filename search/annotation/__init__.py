"""Annotation projects: human relevance judgments beside the model's, their agreement, export and import."""
