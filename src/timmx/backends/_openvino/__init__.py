"""The openvino backend's helpers: conversion and NNCF quantization, the runtime and the IR."""
