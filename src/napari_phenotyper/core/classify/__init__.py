"""Phenotype classification: classifiers, query strategies for active learning."""
