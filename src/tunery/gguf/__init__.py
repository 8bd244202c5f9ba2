"""GGUF export: conversion, quantization and the Ollama bundle around the file."""
