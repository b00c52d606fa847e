"""Evaluation protocols for pretrained backbones: kNN, linear probe, semi-supervised label subsets."""
