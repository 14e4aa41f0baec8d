"""The coreai backend's parts: conversion, reading the saved asset back, its runtime."""
