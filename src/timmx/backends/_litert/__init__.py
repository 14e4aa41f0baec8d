"""LiteRT backend helpers: conversion per precision mode, the flatbuffer's IO types and
contents, and running an artifact in the LiteRT interpreter."""
